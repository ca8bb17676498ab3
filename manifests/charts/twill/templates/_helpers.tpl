{{/* The image every container of the DaemonSet runs: twilld, its CNI plugin and BIRD. */}}
{{- define "twill.image" -}}
{{ .Values.flannel.image.repository }}:{{ .Values.flannel.image.tag }}
{{- end }}

{{/* What the values cannot mean for twill, refused at render time rather than at start. */}}
{{- define "twill.check" -}}
{{- if not (has .Values.flannel.backend (list "vxlan" "host-gw")) }}
{{- fail (printf "flannel.backend=%s: twill implements the vxlan and host-gw backends" .Values.flannel.backend) }}
{{- end }}
{{- if not (or .Values.podCidr .Values.podCidrv6) }}
{{- fail "podCidr and podCidrv6 are both empty: give at least one pod network" }}
{{- end }}
{{- end }}
