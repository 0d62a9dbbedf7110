{{/* Chart-derived keys of the `inference:` config section (services/inference/config.py). */}}
{{- define "streamrec.inference.settings" -}}
model_name: {{ .Values.modelName }}
registry_target: {{ include "streamrec.registryTarget" . }}
cache_dir: /var/lib/streamrec/models
{{- end }}
