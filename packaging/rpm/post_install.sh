# depmap %post: the system user, the receive-buffer limit, then the service preset the
# distribution's way (enabled where the preset policy says so) and started on first install.
getent group depmap >/dev/null || groupadd -r depmap
getent passwd depmap >/dev/null || \
    useradd -r -g depmap -d /var/lib/depmap -s /sbin/nologin -c "depmap network dependency agent" depmap
systemd-sysctl /usr/lib/sysctl.d/60-depmap.conf >/dev/null 2>&1 || :
systemctl daemon-reload >/dev/null 2>&1 || :
if [ "$1" -eq 1 ]; then
    systemctl preset depmap.service >/dev/null 2>&1 || :
    systemctl start depmap.service >/dev/null 2>&1 || :
else
    systemctl try-restart depmap.service >/dev/null 2>&1 || :
fi
