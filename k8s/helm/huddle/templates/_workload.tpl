{{/*
One service of Huddle: its Deployment, Service, PodDisruptionBudget and (optionally)
HorizontalPodAutoscaler. Called with (dict "root" $ "component" "gateway"|"persister"|"hydrator").
*/}}
{{- define "huddle.workload" -}}
{{- $root := .root -}}
{{- $name := include "huddle.componentName" . -}}
{{- $values := index $root.Values .component -}}
{{- $facts := include "huddle.component" . | fromYaml -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  labels:
    {{- include "huddle.componentLabels" . | nindent 4 }}
spec:
  {{- if not $values.autoscaling.enabled }}
  replicas: {{ $values.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  strategy:
    {{- toYaml $values.strategy | nindent 4 }}
  selector:
    matchLabels:
      {{- include "huddle.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "huddle.selectorLabels" . | nindent 8 }}
        {{- with $values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        # Settings are read at start: a changed ConfigMap or Secret rolls the pods.
        checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
        {{- if not $root.Values.secrets.existingSecret }}
        checksum/secret: {{ include (print $root.Template.BasePath "/secret.yaml") $root | sha256sum }}
        {{- end }}
        {{- if $root.Values.metrics.podAnnotations }}
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ $facts.opsPort | quote }}
        prometheus.io/path: /metrics
        {{- end }}
        {{- with $values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "huddle.serviceAccountName" $root }}
      # The services never call the Kubernetes API.
      automountServiceAccountToken: false
      # No {SERVICE}_PORT / _SERVICE_HOST variables: a Service named huddle-… would add
      # HUDDLE_*-looking names to the environment the services read their settings from.
      enableServiceLinks: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      terminationGracePeriodSeconds: {{ $values.terminationGracePeriodSeconds }}
      containers:
        - name: {{ .component }}
          image: {{ include "huddle.image" $root | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: [{{ $facts.binary | quote }}]
          env:
            {{- range $facts.ports }}
            - name: {{ .setting }}
              value: "0.0.0.0:{{ .port }}"
            {{- end }}
            {{- if eq .component "gateway" }}
            - name: HUDDLE_HYDRATOR_URL
              value: "http://{{ include "huddle.componentName" (dict "root" $root "component" "hydrator") }}:50051"
            {{- end }}
            {{- $secret := include "huddle.secretName" $root }}
            {{- range $facts.secretKeys }}
            - name: {{ . }}
              valueFrom:
                secretKeyRef: {name: {{ $secret }}, key: {{ . }}}
            {{- end }}
            {{- if $root.Values.redis.urlFromSecret }}
            - name: HUDDLE_REDIS_URL
              valueFrom:
                secretKeyRef: {name: {{ $secret }}, key: HUDDLE_REDIS_URL}
            {{- end }}
            {{- if $root.Values.trustedCA.configMap }}
            - name: SSL_CERT_FILE
              value: /etc/huddle/trusted-ca/{{ $root.Values.trustedCA.key }}
            {{- end }}
          envFrom:
            - configMapRef: {name: {{ include "huddle.fullname" $root }}}
            - configMapRef: {name: {{ $name }}}
          ports:
            {{- range $facts.ports }}
            - {name: {{ .name }}, containerPort: {{ .port }}, protocol: TCP}
            {{- end }}
          # Ports open only after the migrations ran: liveness waits for this one.
          startupProbe:
            httpGet: {path: /healthz, port: {{ $facts.probePort }}}
            periodSeconds: {{ $root.Values.startupProbe.periodSeconds }}
            failureThreshold: {{ $root.Values.startupProbe.failureThreshold }}
            timeoutSeconds: 2
          livenessProbe:
            {{- if $facts.grpcService }}
            # The gRPC server itself answers (grpc.health.v1 needs no token).
            grpc: {port: {{ $facts.grpcPort }}, service: {{ $facts.grpcService }}}
            {{- else }}
            httpGet: {path: /healthz, port: {{ $facts.probePort }}}
            {{- end }}
            periodSeconds: 10
            timeoutSeconds: 2
            failureThreshold: 3
          # /readyz: PostgreSQL and Redis answer (and, for the persister, RabbitMQ).
          readinessProbe:
            httpGet: {path: /readyz, port: {{ $facts.probePort }}}
            periodSeconds: 5
            timeoutSeconds: 3
            failureThreshold: 2
          {{- if gt (int $values.preStopSleepSeconds) 0 }}
          lifecycle:
            preStop:
              exec:
                command: ["sleep", "{{ $values.preStopSleepSeconds }}"]
          {{- end }}
          resources:
            {{- toYaml $values.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            - {name: tmp, mountPath: /tmp}
            {{- if $root.Values.trustedCA.configMap }}
            - {name: trusted-ca, mountPath: /etc/huddle/trusted-ca, readOnly: true}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir: {sizeLimit: 16Mi}
        {{- if $root.Values.trustedCA.configMap }}
        - name: trusted-ca
          configMap: {name: {{ $root.Values.trustedCA.configMap | quote }}}
        {{- end }}
      {{- with $values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  labels:
    {{- include "huddle.componentLabels" . | nindent 4 }}
  {{- with $values.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ $values.service.type }}
  selector:
    {{- include "huddle.selectorLabels" . | nindent 4 }}
  ports:
    {{- range $facts.ports }}
    {{- if eq .name "http" }}
    - {name: http, port: {{ $values.service.port }}, targetPort: http, protocol: TCP}
    {{- else }}
    - {name: {{ .name }}, port: {{ .port }}, targetPort: {{ .name }}, protocol: TCP}
    {{- end }}
    {{- end }}
{{- if $values.pdb.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $name }}
  labels:
    {{- include "huddle.componentLabels" . | nindent 4 }}
spec:
  {{- if hasKey $values.pdb "minAvailable" }}
  minAvailable: {{ $values.pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ $values.pdb.maxUnavailable }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "huddle.selectorLabels" . | nindent 6 }}
{{- end }}
{{- if $values.autoscaling.enabled }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ $name }}
  labels:
    {{- include "huddle.componentLabels" . | nindent 4 }}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: {{ $name }}}
  minReplicas: {{ $values.autoscaling.minReplicas }}
  maxReplicas: {{ $values.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target: {type: Utilization, averageUtilization: {{ $values.autoscaling.targetCPUUtilizationPercentage }}}
  behavior:
    scaleDown:
      stabilizationWindowSeconds: {{ $values.autoscaling.scaleDownStabilizationSeconds }}
      policies:
        - {type: Pods, value: 1, periodSeconds: 60}
{{- end }}
{{- end -}}
