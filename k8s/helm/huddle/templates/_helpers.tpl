{{/* Chart name, truncated to a DNS label. */}}
{{- define "huddle.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-wide name: the release's name, prefixed with the chart's unless it holds it. */}}
{{- define "huddle.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* What the chart knows about each service: its binary and its ports, each named by the
     listen-address setting that binds it. Pods always listen on 0.0.0.0. */}}
{{- define "huddle.components" -}}
gateway:
  binary: huddle-gateway
  probePort: http
  opsPort: 9100
  secretKeys: [HUDDLE_DATABASE_URL, HUDDLE_AMQP_URL, HUDDLE_SESSION_SECRET, HUDDLE_GRPC_TOKEN]
  ports:
    - {name: http, port: 8080, setting: HUDDLE_GATEWAY_ADDR}
    - {name: ops, port: 9100, setting: HUDDLE_GATEWAY_OPS_ADDR}
persister:
  binary: huddle-persister
  probePort: ops
  opsPort: 9102
  grpcPort: 50052
  grpcService: huddle.v1.Persister
  secretKeys: [HUDDLE_DATABASE_URL, HUDDLE_AMQP_URL, HUDDLE_GRPC_TOKEN]
  ports:
    - {name: grpc, port: 50052, setting: HUDDLE_PERSISTER_GRPC_ADDR}
    - {name: ops, port: 9102, setting: HUDDLE_PERSISTER_OPS_ADDR}
hydrator:
  binary: huddle-hydrator
  probePort: ops
  opsPort: 9101
  grpcPort: 50051
  grpcService: huddle.v1.Hydrator
  secretKeys: [HUDDLE_DATABASE_URL, HUDDLE_AMQP_URL, HUDDLE_GRPC_TOKEN]
  ports:
    - {name: grpc, port: 50051, setting: HUDDLE_HYDRATOR_GRPC_ADDR}
    - {name: ops, port: 9101, setting: HUDDLE_HYDRATOR_OPS_ADDR}
{{- end -}}

{{/* The facts of one component; called with (dict "root" $ "component" "gateway"). */}}
{{- define "huddle.component" -}}
{{- index (include "huddle.components" .root | fromYaml) .component | toYaml -}}
{{- end -}}

{{/* Name of a component's objects, e.g. huddle-gateway. */}}
{{- define "huddle.componentName" -}}
{{- printf "%s-%s" (include "huddle.fullname" .root | trunc 50 | trimSuffix "-") .component -}}
{{- end -}}

{{- define "huddle.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "huddle.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: huddle
{{- end -}}

{{/* Labels of a component's objects; called with (dict "root" $ "component" …). */}}
{{- define "huddle.componentLabels" -}}
{{ include "huddle.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Selector labels: they never change across upgrades (a Deployment's selector is immutable). */}}
{{- define "huddle.selectorLabels" -}}
app.kubernetes.io/name: {{ include "huddle.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "huddle.secretName" -}}
{{- default (include "huddle.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "huddle.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "huddle.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "huddle.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* A settings map as ConfigMap data (a YAML map of strings); called with the map. */}}
{{- define "huddle.configData" -}}
{{- $data := dict -}}
{{- range $key, $value := . -}}
{{- $text := toString $value -}}
{{- /* Whole numbers parsed as floats would print as 1e+06. */ -}}
{{- if and (kindIs "float64" $value) (eq (float64 (int64 $value)) $value) -}}
{{- $text = toString (int64 $value) -}}
{{- end -}}
{{- $_ := set $data $key $text -}}
{{- end -}}
{{- toYaml $data -}}
{{- end -}}
