{{/*
Names are truncated to 63 characters: several Kubernetes name fields are DNS labels.
*/}}
{{- define "kexp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kexp.fullname" -}}
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

{{- define "kexp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels are immutable on a Deployment: only name, instance and component. */}}
{{- define "kexp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kexp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "kexp.labels" -}}
helm.sh/chart: {{ include "kexp.chart" . }}
app.kubernetes.io/name: {{ include "kexp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kexp
{{- end }}

{{- define "kexp.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kexp.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kexp.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "kexp.trainerImage" -}}
{{- $tag := default .Chart.AppVersion .Values.trainer.image.tag }}
{{- if .Values.trainer.image.digest }}
{{- printf "%s@%s" .Values.trainer.image.repository .Values.trainer.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.trainer.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
The Prometheus job name of the operator's metrics, carried as a label on the Service and pod
and picked by the monitors' jobLabel: the alert rules and dashboards select
job=~".*kexp-operator.*", which the default job names (the Service's name, or
<namespace>/<PodMonitor name>) would not match for every release name.
*/}}
{{- define "kexp.scrapeJobLabel" -}}
kexp.io/scrape-job: kexp-operator
{{- end }}

{{/* Whether to render Prometheus Operator objects: the API is served, or a value says so. */}}
{{- define "kexp.prometheusOperator" -}}
{{- if or .Values.monitoring.assumePrometheusOperator (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") }}true{{- end }}
{{- end }}

{{/*
What the operator does in each namespace it watches, derived from the code (README: RBAC):
  experiments           get (re-read after a 409), list + watch (kopf's watch and index,
                        initFrom/template look-ups), patch (labels)
  experiments/status    patch (one merge patch per pass, guarded by resourceVersion)
  experiments/finalizers update: children carry ownerReferences with blockOwnerDeletion, which
                        the OwnerReferencesPermissionEnforcement admission plugin (on in
                        OpenShift and others) only lets a creator set with this verb; it adds
                        nothing patch on experiments does not already allow
  experimenttemplates   list + watch (kopf's index; never read one by one)
  jobs                  create, get (a Job whose watch event trails our own write), list + watch
  pods                  list + watch (kopf's index of the Job's pods, for failure reasons)
  configmaps, services  create (the trainer's config; the headless Service of multi-node runs)
  secrets               get only (S3 credentials named by spec.storage.secretRef); never list
                        or watch, which would put every Secret of the namespace in memory
  events                create (kexp's and kopf's Events on Experiments)
  rayjobs (ray.io)      create, get, list + watch: sweeps with spec.sweep.rayCluster run as a
                        KubeRay RayJob the operator creates and follows (harmless without KubeRay)
*/}}
{{- define "kexp.namespacedRules" -}}
- apiGroups: ["kexp.io"]
  resources: ["experiments"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["kexp.io"]
  resources: ["experiments/status"]
  verbs: ["patch"]
- apiGroups: ["kexp.io"]
  resources: ["experiments/finalizers"]
  verbs: ["update"]
- apiGroups: ["kexp.io"]
  resources: ["experimenttemplates"]
  verbs: ["list", "watch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["create", "get", "list", "watch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["create"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
  {{- with .Values.rbac.secretNames }}
  resourceNames:
    {{- toYaml . | nindent 4 }}
  {{- end }}
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
- apiGroups: ["ray.io"]
  resources: ["rayjobs"]
  verbs: ["create", "get", "list", "watch"]
{{- end }}

{{/* Namespaces the quick-start S3 Secret goes to. */}}
{{- define "kexp.s3SecretNamespaces" -}}
{{- if .Values.s3.secretNamespaces }}
{{- toJson .Values.s3.secretNamespaces }}
{{- else if .Values.watchNamespaces }}
{{- toJson .Values.watchNamespaces }}
{{- else }}
{{- toJson (list .Release.Namespace) }}
{{- end }}
{{- end }}
