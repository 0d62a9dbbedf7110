{{/* Chart-derived keys of the `trainer:` config section (services/trainer/config.py). */}}
{{- define "streamrec.trainer.settings" -}}
{{- $v := .Values.trainer }}
model_name: {{ .Values.modelName }}
registry_target: {{ include "streamrec.registryTarget" . }}
checkpoint_dir: /var/lib/streamrec/checkpoints
consumer_group: {{ include "streamrec.fullname" . }}-trainer
device: {{ ternary "cuda" "auto" $v.gpu.enabled }}
leader_election:
  enabled: {{ $v.leaderElection.enabled }}
  lease_name: {{ include "streamrec.componentName" (dict "root" . "component" "trainer") }}
  namespace: {{ .Release.Namespace }}
  lease_duration_s: {{ $v.leaderElection.leaseDurationSeconds }}
  renew_deadline_s: {{ $v.leaderElection.renewDeadlineSeconds }}
  retry_period_s: {{ $v.leaderElection.retryPeriodSeconds }}
{{- if and $v.gpu.enabled (gt (int $v.gpu.count) 1) }}
# Data-parallel over the pod's GPUs.
distributed:
  enabled: true
  world_size: {{ $v.gpu.count }}
{{- end }}
{{- end }}
