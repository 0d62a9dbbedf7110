{{/* Chart-derived keys of the `ingester:` config section (services/ingester/config.py). */}}
{{- define "streamrec.ingester.settings" -}}
# One consumer group per release, so two releases on one Kafka cluster do not share partitions.
group_id: {{ include "streamrec.fullname" . }}-ingester
{{- end }}
