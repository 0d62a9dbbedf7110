{{/* Chart-derived keys of the `inference:` config section (services/inference/config.py). */}}
{{- define "streamrec.inference.settings" -}}
model_name: {{ .Values.modelName }}
registry_target: {{ include "streamrec.registryTarget" . }}
cache_dir: /var/lib/streamrec/models
{{- /* A pod is the unit of scale here (the HPA adds pods), and one process keeps /metrics and the probes
whole; settings.processes overrides it (worker i serves metrics on port + i). The service's own default,
one process per core, counts the node's cores in a pod without a CPU limit. */}}
processes: 1
{{- end }}
