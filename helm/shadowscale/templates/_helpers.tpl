{{- define "shadowscale.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "shadowscale.fullname" -}}
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

{{- define "shadowscale.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "shadowscale.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "shadowscale.selector" -}}
app.kubernetes.io/name: {{ include "shadowscale.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "shadowscale.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "shadowscale.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "shadowscale.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Environment: SASL credentials from the Secret override the configuration file. */}}
{{- define "shadowscale.kafkaEnv" -}}
{{- if .Values.kafka.sasl.enabled -}}
- name: SHADOWSCALE_AGENT__KAFKA__SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.secret }}
      key: {{ .Values.kafka.sasl.usernameKey }}
- name: SHADOWSCALE_AGENT__KAFKA__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.secret }}
      key: {{ .Values.kafka.sasl.passwordKey }}
{{- end }}
{{- end -}}

{{- define "shadowscale.volumeMounts" -}}
- name: config
  mountPath: /etc/shadowscale
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.kafka.tls.enabled }}
- name: kafka-ca
  mountPath: /etc/shadowscale-kafka-ca
  readOnly: true
{{- end }}
{{- end -}}

{{- define "shadowscale.volumes" -}}
- name: config
  configMap:
    name: {{ include "shadowscale.fullname" . }}
- name: tmp
  emptyDir: {}
{{- if .Values.kafka.tls.enabled }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.tls.caSecret }}
    items:
      - key: {{ .Values.kafka.tls.caKey }}
        path: ca.crt
{{- end }}
{{- end -}}

{{/* Copy values into the agent's configuration under its snake_case names: (list SRC DST (dict "camelKey"
"snake_key" ...)). Keys absent from SRC or null are left out, so the agent's own default applies. */}}
{{- define "shadowscale.snakeInto" -}}
{{- $src := index . 0 -}}
{{- $dst := index . 1 -}}
{{- range $camel, $snake := index . 2 -}}
{{- if and (hasKey $src $camel) (not (kindIs "invalid" (get $src $camel))) -}}
{{- $_ := set $dst $snake (get $src $camel) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "true" when the feature switch (list ROOT WHEN) is on: WHEN is "always" or a dotted path into .Values (a missing
key is off). */}}
{{- define "shadowscale.featureOn" -}}
{{- $root := index . 0 -}}
{{- $when := index . 1 -}}
{{- if eq $when "always" -}}true{{- else -}}
{{- $node := $root.Values -}}
{{- $ok := true -}}
{{- range $part := splitList "." $when -}}
{{- if and $ok (kindIs "map" $node) (hasKey $node $part) -}}{{- $node = get $node $part -}}{{- else -}}{{- $ok = false -}}{{- end -}}
{{- end -}}
{{- and $ok (eq (toString $node) "true") -}}
{{- end -}}
{{- end -}}
