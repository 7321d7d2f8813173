{{/* Chart name, overridable. */}}
{{- define "pdserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, prefixed with the chart name unless it already contains it. */}}
{{- define "pdserve.fullname" -}}
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

{{/* Name of the operator's objects (Deployment, RBAC). */}}
{{- define "pdserve.operatorName" -}}
{{- printf "%s-operator" (include "pdserve.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pdserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pdserve.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pdserve.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Labels that select the operator pod; never change across upgrades. */}}
{{- define "pdserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pdserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "pdserve.labels" -}}
{{ include "pdserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: pdserve
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* Cluster-wide read-only role of a namespaced install; the namespace keeps it unique. */}}
{{- define "pdserve.discoveryName" -}}
{{- printf "%s-%s-discovery" (include "pdserve.operatorName" .) .Release.Namespace | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The pod-patch ValidatingAdmissionPolicy (cluster-scoped); the namespace keeps it unique. */}}
{{- define "pdserve.podPatchPolicyName" -}}
{{- printf "%s-%s-pod-patches" (include "pdserve.operatorName" .) .Release.Namespace | trunc 63 | trimSuffix "-" }}
{{- end }}
