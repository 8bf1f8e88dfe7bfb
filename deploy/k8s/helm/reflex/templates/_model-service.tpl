{{/*
Deployment and headless Service of one model service (embedder or verifier): the two are the
same shape, so one template keeps them from drifting. Call with
(dict "root" $ "component" "embedder").
*/}}
{{- define "reflex.modelService" -}}
{{- $root := .root }}
{{- $component := .component }}
{{- $values := index $root.Values $component }}
{{- $fullname := printf "%s-%s" (include "reflex.fullname" $root) $component }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $fullname }}
  labels:
    {{- include "reflex.labels" . | nindent 4 }}
spec:
  replicas: {{ $values.replicas }}
  selector:
    matchLabels:
      {{- include "reflex.selectorLabels" . | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      # On GPU nodes there is seldom a spare GPU for a surge pod, so GPU pods roll one at a
      # time in place; CPU pods surge, so capacity never drops during a rollout.
      maxSurge: {{ ternary 0 1 $values.gpu.enabled }}
      maxUnavailable: {{ ternary 1 0 $values.gpu.enabled }}
  template:
    metadata:
      labels:
        {{- include "reflex.labels" . | nindent 8 }}
        {{- with $values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        checksum/config: {{ include "reflex.model.configData" . | sha256sum }}
        {{- with $values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      {{- include "reflex.podCommon" (dict "root" $root "values" $values) | nindent 6 }}
      {{- with $values.runtimeClassName }}
      runtimeClassName: {{ . }}
      {{- end }}
      terminationGracePeriodSeconds: {{ add (int $values.preStopSleepSeconds) (int (ceil $values.drainSeconds)) 10 }}
      containers:
        - name: {{ $component }}
          image: {{ include "reflex.image" (dict "root" $root "image" $values.image) }}
          imagePullPolicy: {{ $values.image.pullPolicy }}
          args: [{{ $component | quote }}]
          ports:
            - name: grpc
              containerPort: {{ $values.port }}
              protocol: TCP
            {{- if $values.metricsPort }}
            - name: metrics
              containerPort: {{ $values.metricsPort }}
              protocol: TCP
            {{- end }}
          envFrom:
            - configMapRef:
                name: {{ $fullname }}
          # Native gRPC probes call grpc.health.v1.Health/Check: the server reports NOT_SERVING
          # until its model is loaded and warmed, so no call reaches a cold pod.
          startupProbe:
            grpc:
              port: {{ $values.port }}
              service: {{ $values.healthService | quote }}
            periodSeconds: {{ $values.startupProbe.periodSeconds }}
            failureThreshold: {{ $values.startupProbe.failureThreshold }}
          readinessProbe:
            grpc:
              port: {{ $values.port }}
              service: {{ $values.healthService | quote }}
            periodSeconds: {{ $values.readinessProbe.periodSeconds }}
            timeoutSeconds: {{ $values.readinessProbe.timeoutSeconds }}
            failureThreshold: {{ $values.readinessProbe.failureThreshold }}
          livenessProbe:
            grpc:
              port: {{ $values.port }}
              service: {{ $values.healthService | quote }}
            periodSeconds: {{ $values.livenessProbe.periodSeconds }}
            timeoutSeconds: {{ $values.livenessProbe.timeoutSeconds }}
            failureThreshold: {{ $values.livenessProbe.failureThreshold }}
          lifecycle:
            preStop:
              # The pod leaves the headless Service's DNS answers while it still serves; the
              # gateways' resolvers drop it before SIGTERM starts the drain.
              exec:
                command: ["sleep", "{{ $values.preStopSleepSeconds }}"]
          resources:
            {{- include "reflex.modelResources" (dict "root" $root "values" $values) | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if $values.modelVolume }}
            - name: model
              mountPath: {{ $values.modelMountPath }}
              readOnly: true
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: {{ $root.Values.tmpSizeLimit }}
        {{- with $values.modelVolume }}
        - name: model
          {{- toYaml . | nindent 10 }}
        {{- end }}
---
# Headless (clusterIP: None): DNS answers with every ready pod's IP, so the gateway's gRPC
# client (dns:/// target, round_robin) holds a connection to each replica and spreads calls
# over them. A ClusterIP would pin every call of a gateway to one pod (see the chart README).
apiVersion: v1
kind: Service
metadata:
  name: {{ $fullname }}
  labels:
    {{- include "reflex.labels" . | nindent 4 }}
spec:
  clusterIP: None
  # Only ready pods (model loaded and warm) are published in DNS.
  publishNotReadyAddresses: false
  selector:
    {{- include "reflex.selectorLabels" . | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $values.port }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
    {{- if $values.metricsPort }}
    # Prometheus scrapes /metrics here (the ServiceMonitor selects this port by name).
    - name: metrics
      port: {{ $values.metricsPort }}
      targetPort: metrics
      protocol: TCP
    {{- end }}
{{- end }}
