{{/* Chart-derived keys of the `registry:` config section (services/registry/config.py). */}}
{{- define "streamrec.registry.settings" -}}
{{- $v := .Values.registry }}
{{- if not $v.database.existingSecret }}
# No PostgreSQL Secret: SQLite on the registry's volume (one replica only).
database_url: sqlite:////var/lib/streamrec/registry/registry.db
{{- end }}
artifact_store: {{ $v.storage.type }}
{{- if eq $v.storage.type "s3" }}
# Uploads are staged locally and verified before they go to the bucket.
staging_dir: /var/lib/streamrec/registry/staging
s3:
  bucket: {{ $v.storage.s3.bucket | quote }}
  prefix: {{ $v.storage.s3.prefix | quote }}
  {{- with $v.storage.s3.endpointUrl }}
  endpoint_url: {{ . | quote }}
  {{- end }}
  {{- with $v.storage.s3.region }}
  region: {{ . | quote }}
  {{- end }}
{{- else }}
artifact_root: /var/lib/streamrec/registry/artifacts
{{- end }}
{{- end }}
