{{/*
Shared helpers. Component templates call them with a dict:
  (dict "root" $ "component" "inference")
*/}}

{{- define "streamrec.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "streamrec.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "streamrec.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <fullname>-<component>, the name of every object of a component. */}}
{{- define "streamrec.componentName" -}}
{{- printf "%s-%s" (include "streamrec.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: name, instance, component only (they are immutable on workloads). */}}
{{- define "streamrec.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamrec.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "streamrec.labels" -}}
helm.sh/chart: {{ include "streamrec.chart" .root }}
{{ include "streamrec.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: streamrec
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of chart-wide objects (dashboards, alerts, topics). */}}
{{- define "streamrec.commonLabels" -}}
helm.sh/chart: {{ include "streamrec.chart" . }}
app.kubernetes.io/name: {{ include "streamrec.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: streamrec
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "streamrec.values" -}}
{{- toYaml (index .root.Values .component) }}
{{- end }}

{{- define "streamrec.serviceAccountName" -}}
{{- $v := index .root.Values .component }}
{{- if $v.serviceAccount.create }}
{{- default (include "streamrec.componentName" .) $v.serviceAccount.name }}
{{- else }}
{{- default "default" $v.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* registry/repository:tag@digest; the tag defaults to appVersion (+ "-gpu" for the CUDA image). */}}
{{- define "streamrec.imageRef" -}}
{{- $img := .image }}
{{- $registry := default $img.registry .root.Values.global.imageRegistry }}
{{- $tag := $img.tag | toString }}
{{- if not $tag }}
{{- $tag = .root.Chart.AppVersion }}
{{- if .gpu }}{{ $tag = printf "%s-gpu" $tag }}{{ end }}
{{- end }}
{{- $ref := $img.repository }}
{{- if $registry }}{{ $ref = printf "%s/%s" $registry $ref }}{{ end }}
{{- if $img.digest }}
{{- printf "%s@%s" $ref $img.digest }}
{{- else }}
{{- printf "%s:%s" $ref $tag }}
{{- end }}
{{- end }}

{{- define "streamrec.image" -}}
{{- $v := index .root.Values .component }}
{{- $gpu := and (hasKey $v "gpu") $v.gpu.enabled }}
{{- include "streamrec.imageRef" (dict "root" .root "image" $v.image "gpu" $gpu) }}
{{- end }}

{{- define "streamrec.registryTarget" -}}
{{- printf "%s:%d" (include "streamrec.componentName" (dict "root" . "component" "registry")) (int .Values.registry.service.grpcPort) }}
{{- end }}

{{- define "streamrec.inferenceTarget" -}}
{{- printf "%s:%d" (include "streamrec.componentName" (dict "root" . "component" "inference")) (int .Values.inference.service.grpcPort) }}
{{- end }}

{{- define "streamrec.kafka.tls" -}}
{{- if has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") }}true{{ end }}
{{- end }}

{{/*
Kafka rights per principal (README "Kafka ACLs"; services/common/kafka_acls.py holds the same table): topic key ->
operations. "publisher" is for apps and `streamrec publish`.
*/}}
{{- define "streamrec.kafka.rights" -}}
{{- dict
  "ingester" (dict "events_raw" (list "Read") "items_raw" (list "Read") "events" (list "Read" "Write") "items" (list "Write") "dlq" (list "Write"))
  "trainer" (dict "events" (list "Read") "items" (list "Read"))
  "inference" (dict "events" (list "Read") "model_versions" (list "Read"))
  "registry" (dict "model_versions" (list "Write"))
  "publisher" (dict "events_raw" (list "Write") "items_raw" (list "Write"))
  | toJson }}
{{- end }}

{{/* The KafkaUser of a principal (.root, .component) when kafka.strimzi.users is on. */}}
{{- define "streamrec.kafka.userName" -}}
{{- include "streamrec.componentName" . }}
{{- end }}

{{/*
How a component authenticates to Kafka (.root, .component): {username, passwordSecret: {name, key},
clientSecret: {name, certKey, keyKey}}. With kafka.strimzi.users each has its own KafkaUser and the Secret the
User Operator writes for it; else every component shares kafka.sasl and kafka.tls.clientSecret.
*/}}
{{- define "streamrec.kafka.credentials" -}}
{{- $k := .root.Values.kafka }}
{{- if $k.strimzi.users }}
{{- $user := include "streamrec.kafka.userName" . }}
{{- if eq $k.securityProtocol "SSL" }}
{{- dict "clientSecret" (dict "name" $user "certKey" "user.crt" "keyKey" "user.key") | toJson }}
{{- else }}
{{- dict "username" $user "passwordSecret" (dict "name" $user "key" "password") | toJson }}
{{- end }}
{{- else }}
{{- $out := dict }}
{{- if $k.sasl.mechanism }}
{{- $_ := set $out "username" $k.sasl.username }}
{{- if $k.sasl.passwordSecret.name }}
{{- $_ := set $out "passwordSecret" $k.sasl.passwordSecret }}
{{- end }}
{{- end }}
{{- if $k.tls.clientSecret.name }}
{{- $_ := set $out "clientSecret" $k.tls.clientSecret }}
{{- end }}
{{- $out | toJson }}
{{- end }}
{{- end }}

{{/* Components that speak gRPC and so hold a certificate of their own. */}}
{{- define "streamrec.grpcTls.components" -}}
{{- list "registry" "inference" "trainer" | toJson }}
{{- end }}

{{/* Secret with ca.crt, tls.crt, tls.key of an identity (registry, inference, trainer, operator). */}}
{{- define "streamrec.grpcTls.secretName" -}}
{{- index .root.Values.grpcTls.secrets .identity | default (printf "%s-%s-tls" (include "streamrec.fullname" .root) .identity) }}
{{- end }}

{{/* The `tls:` config section of a gRPC component (services/common/tls.py). */}}
{{- define "streamrec.grpcTls.config" -}}
{{- $t := .root.Values.grpcTls }}
{{- if not $t.enabled }}
plaintext: true
{{- else }}
ca_file: /etc/streamrec/grpc-tls/ca.crt
cert_file: /etc/streamrec/grpc-tls/tls.crt
key_file: /etc/streamrec/grpc-tls/tls.key
{{- if eq .component "inference" }}
client_auth: {{ $t.inferenceClientAuth }}
{{- if $t.tokensSecret.name }}
tokens_file: /etc/streamrec/grpc-tokens/{{ $t.tokensSecret.key }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- define "streamrec.grpcTls.volumeMounts" -}}
{{- if and .root.Values.grpcTls.enabled (has .component (include "streamrec.grpcTls.components" . | fromJsonArray)) }}
- name: grpc-tls
  mountPath: /etc/streamrec/grpc-tls
  readOnly: true
{{- if and (eq .component "inference") .root.Values.grpcTls.tokensSecret.name }}
- name: grpc-tokens
  mountPath: /etc/streamrec/grpc-tokens
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{- define "streamrec.grpcTls.volumes" -}}
{{- $t := .root.Values.grpcTls }}
{{- if and $t.enabled (has .component (include "streamrec.grpcTls.components" . | fromJsonArray)) }}
- name: grpc-tls
  secret:
    secretName: {{ include "streamrec.grpcTls.secretName" (dict "root" .root "identity" .component) }}
    defaultMode: 0440
    items:
      - {key: ca.crt, path: ca.crt}
      - {key: tls.crt, path: tls.crt}
      - {key: tls.key, path: tls.key}
{{- if and (eq .component "inference") $t.tokensSecret.name }}
- name: grpc-tokens
  secret:
    secretName: {{ $t.tokensSecret.name }}
    defaultMode: 0440
    items:
      - {key: {{ $t.tokensSecret.key | quote }}, path: {{ $t.tokensSecret.key | quote }}}
{{- end }}
{{- end }}
{{- end }}

{{/* Topics are created by Strimzi when it manages them, otherwise (optionally) by the services. */}}
{{- define "streamrec.kafka.createTopics" -}}
{{- if and .Values.kafka.topics.create (not .Values.kafka.strimzi.enabled) }}true{{ else }}false{{ end }}
{{- end }}

{{/*
config.yaml of a component, in the format of services/<component>/config.py. `settings` are the
component's own section, defaults first, the user's `config.settings` on top.
*/}}
{{- define "streamrec.configYaml" -}}
{{- $root := .root }}
{{- $v := index $root.Values .component }}
{{- $k := $root.Values.kafka }}
{{- $kafka := dict "bootstrap_servers" $k.bootstrapServers "security_protocol" $k.securityProtocol "client_id" (include "streamrec.componentName" .) }}
{{- $cred := include "streamrec.kafka.credentials" . | fromJson }}
{{- if $k.sasl.mechanism }}
{{- $_ := set $kafka "sasl_mechanism" $k.sasl.mechanism }}
{{- $_ := set $kafka "sasl_username" $cred.username }}
{{- end }}
{{- if include "streamrec.kafka.tls" $root }}
{{- if $k.tls.caSecret.name }}
{{- $_ := set $kafka "ssl_cafile" (printf "/etc/streamrec/kafka-tls/ca/%s" $k.tls.caSecret.key) }}
{{- end }}
{{- with $cred.clientSecret }}
{{- $_ := set $kafka "ssl_certfile" (printf "/etc/streamrec/kafka-tls/client/%s" .certKey) }}
{{- $_ := set $kafka "ssl_keyfile" (printf "/etc/streamrec/kafka-tls/client/%s" .keyKey) }}
{{- end }}
{{- end }}
{{- $topics := dict "prefix" $k.topics.prefix "partitions" (int $k.topics.partitions) "replication_factor" (int $k.topics.replicationFactor) "create" (eq (include "streamrec.kafka.createTopics" $root) "true") }}
{{- range $key, $name := $k.topics.names }}
{{- $_ := set $topics $key $name }}
{{- end }}
{{- $_ := set $kafka "topics" $topics }}
{{- $cfg := dict "kafka" $kafka "logging" (dict "level" $v.config.logLevel "format" "json") "metrics" (dict "enabled" true "host" "0.0.0.0" "port" (int $v.metrics.port)) }}
{{- /* The service's own stop deadline, just under the kubelet's: its log says where it was stuck before SIGKILL. */}}
{{- $_ := set $cfg "lifecycle" (dict "stop_timeout_s" (max 1 (sub (int $v.terminationGracePeriodSeconds) 2))) }}
{{- if hasKey $v.service "grpcPort" }}
{{- $_ := set $cfg "grpc" (dict "host" "0.0.0.0" "port" (int $v.service.grpcPort) "shutdown_grace_s" (max 1 (sub (int $v.terminationGracePeriodSeconds) 5))) }}
{{- end }}
{{- if has .component (include "streamrec.grpcTls.components" . | fromJsonArray) }}
{{- $_ := set $cfg "tls" (include "streamrec.grpcTls.config" . | fromYaml) }}
{{- end }}
{{- $section := include (printf "streamrec.%s.settings" .component) $root | fromYaml }}
{{- $_ := set $cfg .component (mergeOverwrite $section (deepCopy $v.config.settings)) }}
{{- toYaml $cfg }}
{{- end }}

{{/* Env every container of a component gets. */}}
{{- define "streamrec.env" -}}
{{- $root := .root }}
{{- $v := index $root.Values .component }}
- name: STREAMREC_CONFIG
  value: /etc/streamrec/config.yaml
- name: POD_NAME
  valueFrom:
    fieldRef: {fieldPath: metadata.name}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef: {fieldPath: metadata.namespace}
# The root filesystem is read-only: caches (torch, transformers, Python) go to /tmp.
- name: HOME
  value: /tmp
- name: XDG_CACHE_HOME
  value: /tmp/.cache
{{- $cred := include "streamrec.kafka.credentials" . | fromJson }}
{{- if and $root.Values.kafka.sasl.mechanism $cred.passwordSecret }}
- name: STREAMREC_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $cred.passwordSecret.name }}
      key: {{ $cred.passwordSecret.key }}
{{- end }}
{{- end }}

{{- define "streamrec.kafka.volumeMounts" -}}
{{- if include "streamrec.kafka.tls" .root }}
{{- if .root.Values.kafka.tls.caSecret.name }}
- name: kafka-ca
  mountPath: /etc/streamrec/kafka-tls/ca
  readOnly: true
{{- end }}
{{- if (include "streamrec.kafka.credentials" . | fromJson).clientSecret }}
- name: kafka-client-tls
  mountPath: /etc/streamrec/kafka-tls/client
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{- define "streamrec.kafka.volumes" -}}
{{- $k := .root.Values.kafka }}
{{- if include "streamrec.kafka.tls" .root }}
{{- if $k.tls.caSecret.name }}
- name: kafka-ca
  secret:
    secretName: {{ $k.tls.caSecret.name }}
    items:
      - {key: {{ $k.tls.caSecret.key | quote }}, path: {{ $k.tls.caSecret.key | quote }}}
{{- end }}
{{- with (include "streamrec.kafka.credentials" . | fromJson).clientSecret }}
- name: kafka-client-tls
  secret:
    secretName: {{ .name }}
    defaultMode: 0400
    items:
      - {key: {{ .certKey | quote }}, path: {{ .certKey | quote }}}
      - {key: {{ .keyKey | quote }}, path: {{ .keyKey | quote }}}
{{- end }}
{{- end }}
{{- end }}

{{/* Probe timing fields from probes.<kind>. */}}
{{- define "streamrec.probeTiming" -}}
initialDelaySeconds: {{ .initialDelaySeconds }}
periodSeconds: {{ .periodSeconds }}
timeoutSeconds: {{ .timeoutSeconds }}
failureThreshold: {{ .failureThreshold }}
{{- end }}

{{/*
Probes. Liveness and startup: /healthz on the metrics port (the process is alive). Readiness:
gRPC health on the gRPC port for gRPC services (SERVING only when ready: a model loaded, the
database open), /readyz on the metrics port for the others.
*/}}
{{- define "streamrec.probes" -}}
{{- $v := index .root.Values .component }}
{{- $p := $v.probes }}
{{- if $p.startup.enabled }}
startupProbe:
  httpGet: {path: /healthz, port: metrics}
  {{- include "streamrec.probeTiming" $p.startup | trim | nindent 2 }}
{{- end }}
{{- if $p.liveness.enabled }}
livenessProbe:
  httpGet: {path: /healthz, port: metrics}
  {{- include "streamrec.probeTiming" $p.liveness | trim | nindent 2 }}
{{- end }}
{{- if $p.readiness.enabled }}
readinessProbe:
  {{- if hasKey $v.service "grpcPort" }}
  grpc:
    port: {{ $v.service.grpcPort }}
  {{- else }}
  httpGet: {path: /readyz, port: metrics}
  {{- end }}
  {{- include "streamrec.probeTiming" $p.readiness | trim | nindent 2 }}
{{- end }}
{{- end }}

{{- define "streamrec.ports" -}}
{{- $v := index .root.Values .component }}
{{- if hasKey $v.service "grpcPort" }}
- name: grpc
  containerPort: {{ $v.service.grpcPort }}
  protocol: TCP
{{- end }}
- name: metrics
  containerPort: {{ $v.metrics.port }}
  protocol: TCP
{{- end }}

{{- define "streamrec.gpuLimits" -}}
{{- $v := index .root.Values .component }}
{{- $res := deepCopy (default dict $v.resources) }}
{{- if and (hasKey $v "gpu") $v.gpu.enabled }}
{{- $limits := default dict $res.limits }}
{{- $_ := set $limits $v.gpu.resourceName (int $v.gpu.count) }}
{{- $_ := set $res "limits" $limits }}
{{- end }}
{{- toYaml $res }}
{{- end }}

{{/*
The pod template of a component. Arguments: root, component, and optionally
volumeMounts / volumes (YAML lists as strings) for the component's writable paths.
*/}}
{{- define "streamrec.podTemplate" -}}
{{- $root := .root }}
{{- $v := index $root.Values .component }}
metadata:
  labels:
    {{- include "streamrec.labels" . | trim | nindent 4 }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include (print $root.Template.BasePath "/" .component "/configmap.yaml") $root | sha256sum }}
    {{- with $v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "streamrec.serviceAccountName" . }}
  automountServiceAccountToken: {{ .automountToken | default false }}
  {{- with $root.Values.global.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- if and (hasKey $v "gpu") $v.gpu.enabled $v.gpu.runtimeClassName }}
  runtimeClassName: {{ $v.gpu.runtimeClassName }}
  {{- end }}
  terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
  securityContext:
    {{- toYaml $v.podSecurityContext | nindent 4 }}
  containers:
    - name: {{ .component }}
      image: {{ include "streamrec.image" . }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      args: [{{ .component | quote }}, "--config", "/etc/streamrec/config.yaml"]
      ports:
        {{- include "streamrec.ports" . | trim | nindent 8 }}
      env:
        {{- include "streamrec.env" . | trim | nindent 8 }}
        {{- with .env }}
        {{- . | trim | nindent 8 }}
        {{- end }}
        {{- with $v.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- include "streamrec.probes" . | trim | nindent 6 }}
      resources:
        {{- include "streamrec.gpuLimits" . | trim | nindent 8 }}
      securityContext:
        {{- toYaml $v.securityContext | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/streamrec
          readOnly: true
        - name: tmp
          mountPath: /tmp
        {{- with include "streamrec.kafka.volumeMounts" . | trim }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- with include "streamrec.grpcTls.volumeMounts" . | trim }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- with .volumeMounts }}
        {{- . | trim | nindent 8 }}
        {{- end }}
        {{- with $v.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "streamrec.componentName" . }}
    - name: tmp
      emptyDir:
        sizeLimit: 1Gi
    {{- with include "streamrec.kafka.volumes" . | trim }}
    {{- . | nindent 4 }}
    {{- end }}
    {{- with include "streamrec.grpcTls.volumes" . | trim }}
    {{- . | nindent 4 }}
    {{- end }}
    {{- with .volumes }}
    {{- . | trim | nindent 4 }}
    {{- end }}
    {{- with $v.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
