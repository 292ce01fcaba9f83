{{/*
Chart name, overridable with .Values.nameOverride.
*/}}
{{- define "iotstamp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name used as the prefix of every object the chart creates: the release name, plus the chart
name unless the release name already contains it. Truncated to 63 characters (DNS label).
*/}}
{{- define "iotstamp.fullname" -}}
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

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "iotstamp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels that select the operator pod. Never change them in an upgrade: a Deployment's selector is
immutable.
*/}}
{{- define "iotstamp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "iotstamp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Labels on every object of the chart. managed-by is "Helm" here; the objects the operator itself
creates for stamps carry app.kubernetes.io/managed-by=iotstamp-operator instead, and the operator
watches only those.
*/}}
{{- define "iotstamp.labels" -}}
helm.sh/chart: {{ include "iotstamp.chart" . }}
{{ include "iotstamp.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: iotstamp
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The ServiceAccount the operator runs as.
*/}}
{{- define "iotstamp.serviceAccountName" -}}
{{- .Values.serviceAccount.name }}
{{- end }}

{{/*
The operator image; stamps that name no image in spec.image run the same one.
*/}}
{{- define "iotstamp.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
Labels that select the router's pods (a different component from the operator's, so neither
Deployment's selector ever matches the other's pods).
*/}}
{{- define "iotstamp.routerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "iotstamp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: router
{{- end }}

{{- define "iotstamp.routerLabels" -}}
helm.sh/chart: {{ include "iotstamp.chart" . }}
{{ include "iotstamp.routerSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: iotstamp
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The namespace whose IoTStamps, EnrollmentGroups and Secrets the router reads.
*/}}
{{- define "iotstamp.routerNamespace" -}}
{{- .Values.router.namespace | default .Release.Namespace }}
{{- end }}
