{{/*
Chart name, truncated to the 63 characters a DNS label allows.
*/}}
{{- define "reflex.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: the prefix of every resource. If the release name already contains
the chart name it is used alone, so `helm install reflex .` gives `reflex-gateway`, not
`reflex-reflex-gateway`. Truncated to leave room for the longest suffix ("-embedder").
*/}}
{{- define "reflex.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "reflex.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every resource. Call with (dict "root" $ "component" "gateway").
*/}}
{{- define "reflex.labels" -}}
helm.sh/chart: {{ include "reflex.chart" .root }}
{{ include "reflex.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: reflex
{{- end }}

{{/*
Selector labels: stable across upgrades (a Deployment's selector is immutable), so only
name, instance and component.
*/}}
{{- define "reflex.selectorLabels" -}}
app.kubernetes.io/name: {{ include "reflex.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
The ServiceAccount the pods run as.
*/}}
{{- define "reflex.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "reflex.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference of a component. Call with (dict "root" $ "image" .Values.gateway.image).
*/}}
{{- define "reflex.image" -}}
{{- $repository := required "image.repository must be set for every component" .image.repository -}}
{{- printf "%s:%s" $repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{/*
Name of the Secret holding the application secrets: an existing one, or the chart's own.
*/}}
{{- define "reflex.secretName" -}}
{{- default (include "reflex.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/*
Name of the chart-made Secret holding the in-chart Redis password and the URL built from it.
*/}}
{{- define "reflex.redisSecretName" -}}
{{- printf "%s-redis" (include "reflex.fullname" .) }}
{{- end }}

{{/*
Fully qualified DNS name of a model service's headless Service. Call with
(dict "root" $ "component" "embedder").
*/}}
{{- define "reflex.modelServiceHost" -}}
{{- printf "%s-%s.%s.svc.%s" (include "reflex.fullname" .root) .component .root.Release.Namespace .root.Values.clusterDomain }}
{{- end }}

{{/*
gRPC target of a model service for the gateway. `dns:///` makes the gateway's gRPC client
resolve the headless Service to every ready pod's IP (and re-resolve when connections drop),
and the client's round_robin policy spreads calls over all of them. A ClusterIP Service would
instead give one virtual IP: gRPC opens one long-lived HTTP/2 connection to it, kube-proxy
balances connections, not calls, so every call would go to the one pod behind that connection.
*/}}
{{- define "reflex.modelServiceTarget" -}}
{{- $values := index .root.Values .component -}}
{{- printf "dns:///%s:%d" (include "reflex.modelServiceHost" .) (int $values.port) }}
{{- end }}

{{/*
Resources of a model service, with the GPU request added when the component asks for one.
Extended resources such as nvidia.com/gpu cannot be overcommitted, so request and limit are
set to the same count. Call with (dict "root" $ "values" .Values.embedder).
*/}}
{{- define "reflex.modelResources" -}}
{{- $resources := deepCopy (default dict .values.resources) -}}
{{- if .values.gpu.enabled -}}
{{- $gpu := dict .root.Values.gpu.resourceName (int .values.gpu.count) -}}
{{- $_ := set $resources "limits" (merge (default dict $resources.limits) $gpu) -}}
{{- $_ := set $resources "requests" (merge (default dict $resources.requests) $gpu) -}}
{{- end -}}
{{- toYaml $resources }}
{{- end }}

{{/*
torch device of a model service: explicit, else cuda exactly when a GPU is requested.
*/}}
{{- define "reflex.modelDevice" -}}
{{- if .device }}{{ .device }}{{ else if .gpu.enabled }}cuda{{ else }}cpu{{ end }}
{{- end }}

{{/*
Non-secret environment of the gateway, as a YAML map of REFLEX_* name -> string. Rendered into
its ConfigMap and hashed into the pods' checksum/config annotation, so a change rolls the pods.
Entries in gateway.config override the chart's.
*/}}
{{- define "reflex.gateway.configData" -}}
{{- $data := dict
  "REFLEX_BIND_ADDR" "0.0.0.0"
  "REFLEX_PORT" (toString .Values.gateway.port)
  "REFLEX_SHUTDOWN_GRACE_SECS" (toString .Values.gateway.drainSeconds)
  "REFLEX_UPSTREAM_URL" .Values.upstream.url
  "REFLEX_MOCK_PROVIDER" (ternary "1" "0" .Values.upstream.mock)
  "REFLEX_EMBEDDER_URL" (include "reflex.modelServiceTarget" (dict "root" . "component" "embedder"))
  "REFLEX_VERIFIER_URL" (include "reflex.modelServiceTarget" (dict "root" . "component" "verifier"))
-}}
{{- if .Values.qdrant.enabled }}
{{- $_ := set $data "REFLEX_QDRANT_URL" (printf "http://%s-qdrant:6333" (include "reflex.fullname" .)) }}
{{- else }}
{{- $_ := set $data "REFLEX_QDRANT_URL" (required "qdrant.enabled is false: set externalQdrant.url (gateway replicas need one shared L2)" .Values.externalQdrant.url) }}
{{- end }}
{{- range $name, $value := .Values.gateway.config }}
{{- $_ := set $data $name (toString $value) }}
{{- end }}
{{- toYaml $data }}
{{- end }}

{{/*
Non-secret environment of a model service. Call with (dict "root" $ "component" "embedder").
*/}}
{{- define "reflex.model.configData" -}}
{{- $values := index .root.Values .component -}}
{{- $data := dict
  "REFLEX_GRPC_BIND_ADDR" "0.0.0.0"
  "REFLEX_GRPC_PORT" (toString $values.port)
  "REFLEX_SHUTDOWN_GRACE_SECS_GRPC" (toString $values.drainSeconds)
  "REFLEX_DEVICE" (include "reflex.modelDevice" $values)
-}}
{{- if $values.torchThreads }}
{{- $_ := set $data "REFLEX_TORCH_THREADS" (toString $values.torchThreads) }}
{{- end }}
{{- if $values.metricsPort }}
{{- $_ := set $data "REFLEX_METRICS_PORT" (toString $values.metricsPort) }}
{{- end }}
{{- if $values.modelPath }}
{{- $_ := set $data (ternary "REFLEX_MODEL_PATH" "REFLEX_RERANKER_PATH" (eq .component "embedder")) $values.modelPath }}
{{- end }}
{{- range $name, $value := $values.config }}
{{- $_ := set $data $name (toString $value) }}
{{- end }}
{{- toYaml $data }}
{{- end }}

{{/*
Secret environment of the gateway: every value comes through secretKeyRef, never a ConfigMap.
*/}}
{{- define "reflex.gateway.secretEnv" -}}
- name: REFLEX_UPSTREAM_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "reflex.secretName" . }}
      key: {{ .Values.secrets.keys.upstreamApiKey }}
      optional: true
- name: REFLEX_QDRANT_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "reflex.secretName" . }}
      key: {{ .Values.secrets.keys.qdrantApiKey }}
      optional: true
- name: REFLEX_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "reflex.secretName" . }}
      key: {{ .Values.secrets.keys.adminToken }}
      optional: true
- name: REFLEX_REDIS_URL
  valueFrom:
    secretKeyRef:
{{- if .Values.redis.enabled }}
      name: {{ include "reflex.redisSecretName" . }}
      key: url
{{- else }}
      name: {{ include "reflex.secretName" . }}
      key: {{ .Values.secrets.keys.redisUrl }}
{{- end }}
{{- end }}

{{/*
Fail early on value combinations that would deploy a broken cache.
*/}}
{{- define "reflex.validate" -}}
{{- if and (not .Values.redis.enabled) (not .Values.secrets.existingSecret) -}}
{{- $_ := required "redis.enabled is false: set externalRedis.url (or the redisUrl key of secrets.existingSecret), so every gateway replica shares one L1" .Values.externalRedis.url -}}
{{- end -}}
{{- range $component := list "gateway" "embedder" "verifier" -}}
{{- range $name, $_ := (index $.Values $component).config -}}
{{- if not (hasPrefix "REFLEX_" $name) -}}
{{- fail (printf "%s.config: %s is not a REFLEX_* setting" $component $name) -}}
{{- end -}}
{{- if has $name (list "REFLEX_UPSTREAM_API_KEY" "REFLEX_QDRANT_API_KEY" "REFLEX_REDIS_URL" "REFLEX_ADMIN_TOKEN") -}}
{{- fail (printf "%s.config: %s is a secret; set it under secrets (or in secrets.existingSecret), never in a ConfigMap" $component $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/*
Pod-level fields shared by every Reflex workload. Call with (dict "root" $ "values" .Values.gateway).
*/}}
{{- define "reflex.podCommon" -}}
serviceAccountName: {{ include "reflex.serviceAccountName" .root }}
automountServiceAccountToken: false
{{- /* Kubernetes would otherwise inject EMBEDDER_PORT=tcp://... style variables for every Service in the namespace. */}}
enableServiceLinks: false
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
