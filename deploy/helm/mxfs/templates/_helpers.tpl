{{/* Chart name, truncated to a DNS label. */}}
{{- define "mxfs.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name: "<release>-mxfs", or fullnameOverride. */}}
{{- define "mxfs.fullname" -}}
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

{{- define "mxfs.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "mxfs.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Values.managedBy | default .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component (server, node, redis). */}}
{{- define "mxfs.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mxfs.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "mxfs.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "mxfs.serverAddress" -}}
{{ if .Values.tls.secret }}https://{{ end }}{{ include "mxfs.fullname" . }}-server.{{ .Release.Namespace }}.svc:{{ .Values.server.port }}
{{- end -}}
{{/* Volume mounts of the auth token and TLS secrets (server and node daemon). */}}
{{- define "mxfs.secretMounts" -}}
{{- if .Values.auth.tokenSecret }}
- name: auth-token
  mountPath: /etc/mxfs/auth
  readOnly: true
{{- end }}
{{- if .Values.tls.secret }}
- name: tls
  mountPath: /etc/mxfs/tls
  readOnly: true
{{- end }}
{{- end -}}
{{- define "mxfs.secretVolumes" -}}
{{- if .Values.auth.tokenSecret }}
- name: auth-token
  secret:
    secretName: {{ .Values.auth.tokenSecret }}
    defaultMode: 0440  # readable by the fsGroup of the non-root server
{{- end }}
{{- if .Values.tls.secret }}
- name: tls
  secret:
    secretName: {{ .Values.tls.secret }}
    defaultMode: 0440  # readable by the fsGroup of the non-root server
{{- end }}
{{- end -}}

{{- define "mxfs.redisUrl" -}}
{{- if .Values.redis.url -}}
{{ .Values.redis.url }}
{{- else if .Values.redis.enabled -}}
redis://{{ include "mxfs.fullname" . }}-redis.{{ .Release.Namespace }}.svc:6379/0
{{- end -}}
{{- end -}}

{{/* ServiceAccount of a component: serviceAccount.name.<component>, else the chart's own
(<fullname>-<component>) when it creates them, else "default". */}}
{{- define "mxfs.serviceAccountName" -}}
{{- $sa := .root.Values.serviceAccount -}}
{{- $name := index (default (dict) $sa.name) .component | default "" -}}
{{- if $sa.create -}}
{{ $name | default (printf "%s-%s" (include "mxfs.fullname" .root) .component) }}
{{- else -}}
{{ $name | default "default" }}
{{- end -}}
{{- end -}}

{{/* Prometheus scrape annotations for a metrics port; none when the port is 0 (off). */}}
{{- define "mxfs.metricsAnnotations" -}}
{{- if and .root.Values.metrics.annotations .port }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{/* The node peer port: node.peerPort when a cluster token is configured (peerTokenSecret or
auth.tokenSecret; the daemon refuses a peer port without one), else "" (peer cache off). */}}
{{- define "mxfs.peerPort" -}}
{{- if and .Values.node.peerPort (or .Values.peerTokenSecret .Values.auth.tokenSecret) -}}
{{ .Values.node.peerPort }}
{{- end -}}
{{- end -}}

{{/* MXFS_PEER_TOKEN from peerTokenSecret (key "token"), shared by server and nodes. */}}
{{- define "mxfs.peerTokenEnv" -}}
{{- if .Values.peerTokenSecret -}}
- name: MXFS_PEER_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.peerTokenSecret }}
      key: token
{{- end -}}
{{- end -}}
