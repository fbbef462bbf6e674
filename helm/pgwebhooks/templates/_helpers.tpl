{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "pgwebhooks.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: <release>-pgwebhooks, or the release name when it already contains the chart name. */}}
{{- define "pgwebhooks.fullname" -}}
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

{{- define "pgwebhooks.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels shared by every pod of the release (the component label tells them apart). */}}
{{- define "pgwebhooks.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pgwebhooks.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Standard labels. */}}
{{- define "pgwebhooks.labels" -}}
helm.sh/chart: {{ include "pgwebhooks.chart" . }}
{{ include "pgwebhooks.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pgwebhooks
{{- end }}

{{/* Selector of the sidecar pods (the Deployment, Service, PDB, ServiceMonitor); the migration Job's pods are not selected. */}}
{{- define "pgwebhooks.sidecarSelectorLabels" -}}
{{ include "pgwebhooks.selectorLabels" . }}
app.kubernetes.io/component: sidecar
{{- end }}

{{- define "pgwebhooks.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pgwebhooks.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pgwebhooks.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret holding the credentials: the existing one, or the one the chart creates. */}}
{{- define "pgwebhooks.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else }}
{{- include "pgwebhooks.fullname" . }}
{{- end }}
{{- end }}

{{/* True (non-empty) when some Secret is known to hold the credentials. */}}
{{- define "pgwebhooks.hasSecret" -}}
{{- if or .Values.secrets.existingSecret .Values.secrets.create }}true{{ end }}
{{- end }}

{{/* True (non-empty) when a database URL source is configured. */}}
{{- define "pgwebhooks.hasDatabaseUrl" -}}
{{- if or .Values.secrets.existingSecret .Values.secrets.databaseUrlSecret (and .Values.secrets.create .Values.secrets.values.DATABASE_URL) }}true{{ end }}
{{- end }}

{{/* Credential variables other than DATABASE_URL, in a stable order. */}}
{{- define "pgwebhooks.secretKeys" -}}
PGWEBHOOKS_INBOUND_SECRET
PGWEBHOOKS_ADMIN_TOKEN
WEBHOOK_SECRET
MAKE_WEBHOOK_APPOINTMENTS_URL
MAKE_WEBHOOK_MESSAGES_URL
MAKE_WEBHOOK_COHORT_ENROLLMENTS_URL
MAKE_WEBHOOK_COHORT_MESSAGES_URL
MAKE_WEBHOOK_SUPPORT_TICKETS_URL
MAKE_WEBHOOK_PAYMENTS_URL
MAKE_WEBHOOK_ERRORS_URL
WEBHOOK_URL
MAKE_WEBHOOK_ADMIN_URL
{{- end }}

{{/* DATABASE_URL: always from a Secret (secretKeyRef), never a literal value. */}}
{{- define "pgwebhooks.databaseUrlEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ default (include "pgwebhooks.secretName" .) .Values.secrets.databaseUrlSecret }}
      key: {{ .Values.secrets.databaseUrlKey }}
{{- end }}

{{/* The migration Job's DATABASE_URL: the migrate role's, when a key is named. */}}
{{- define "pgwebhooks.migrateDatabaseUrlEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ default (include "pgwebhooks.secretName" .) .Values.secrets.databaseUrlSecret }}
      key: {{ default .Values.secrets.databaseUrlKey .Values.secrets.migrateDatabaseUrlKey }}
{{- end }}

{{/*
The other credentials (the sidecar only; `migrate` needs none of them). With an
existing Secret each is an optional reference (a missing key means "not set");
with the chart's Secret only the keys it holds are referenced.
*/}}
{{- define "pgwebhooks.credentialEnv" -}}
{{- $secretName := include "pgwebhooks.secretName" . }}
{{- range $key := splitList "\n" (include "pgwebhooks.secretKeys" .) }}
{{- if $.Values.secrets.existingSecret }}
- name: {{ $key }}
  valueFrom:
    secretKeyRef:
      name: {{ $secretName }}
      key: {{ $key }}
      optional: true
{{- else if and $.Values.secrets.create (get $.Values.secrets.values $key) }}
- name: {{ $key }}
  valueFrom:
    secretKeyRef:
      name: {{ $secretName }}
      key: {{ $key }}
{{- end }}
{{- end }}
{{- end }}

{{/* Non-secret settings (`config`) and `extraEnv`, for the sidecar and the migration Job. */}}
{{- define "pgwebhooks.configEnv" -}}
{{- range $key, $value := .Values.config }}
- name: {{ $key }}
  value: {{ $value | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Pod-level settings shared by the sidecar and the migration Job. */}}
{{- define "pgwebhooks.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Writable scratch space: the root filesystem is read-only. */}}
{{- define "pgwebhooks.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "pgwebhooks.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* terminationGracePeriodSeconds: longer than the drain the sidecar does on SIGTERM. */}}
{{- define "pgwebhooks.terminationGracePeriodSeconds" -}}
{{- add (int .Values.preStopSleepSeconds) (int .Values.shutdownGraceSeconds) (int .Values.terminationGraceExtraSeconds) }}
{{- end }}

{{/* Combinations the schema cannot express clearly: fail with a message that says what to do. */}}
{{- define "pgwebhooks.validate" -}}
{{- if and .Values.secrets.existingSecret .Values.secrets.create }}
{{- fail "secrets.existingSecret and secrets.create are both set: use one (with an existing Secret, add --set secrets.create=false)" }}
{{- end }}
{{- if not (or .Values.secrets.existingSecret .Values.secrets.create .Values.secrets.databaseUrlSecret) }}
{{- fail "no Secret holds DATABASE_URL: set secrets.existingSecret, secrets.create=true or secrets.databaseUrlSecret" }}
{{- end }}
{{- end }}
