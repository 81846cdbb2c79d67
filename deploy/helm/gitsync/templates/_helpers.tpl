{{- define "gitsync.labels" -}}
app.kubernetes.io/name: gitsync
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: gitsync
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "gitsync.selector" -}}
app.kubernetes.io/name: gitsync
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gitsync.subject" -}}
- kind: ServiceAccount
  name: {{ .Values.name }}
  namespace: {{ .Release.Namespace }}
{{- end }}
