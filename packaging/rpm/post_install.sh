# depmap %post: the system user, the receive-buffer limit, then the service preset the
# distribution's way (enabled where the preset policy says so) and started on first install.
getent group depmap >/dev/null || groupadd -r depmap
getent passwd depmap >/dev/null || \
    useradd -r -g depmap -d /var/lib/depmap -s /sbin/nologin -c "depmap network dependency agent" depmap
# The receive-buffer limit now (it applies at every boot from /usr/lib/sysctl.d anyway):
# systemd-sysctl is not on PATH on Debian 12 (/lib/systemd) nor RHEL (/usr/lib/systemd), so
# it is looked for there, then procps' sysctl. Inside a container /proc/sys may be read-only.
apply_sysctl() {
    for tool in /usr/lib/systemd/systemd-sysctl /lib/systemd/systemd-sysctl; do
        if [ -x "$tool" ]; then
            "$tool" /usr/lib/sysctl.d/60-depmap.conf && return 0
        fi
    done
    command -v sysctl >/dev/null 2>&1 && sysctl -q -p /usr/lib/sysctl.d/60-depmap.conf
}
apply_sysctl >/dev/null 2>&1 || echo "depmap: net.core.rmem_max not raised now (it is at the next boot)" >&2
systemctl daemon-reload >/dev/null 2>&1 || :
if [ "$1" -eq 1 ]; then
    systemctl preset depmap.service >/dev/null 2>&1 || :
    systemctl start depmap.service >/dev/null 2>&1 || :
else
    systemctl try-restart depmap.service >/dev/null 2>&1 || :
fi
