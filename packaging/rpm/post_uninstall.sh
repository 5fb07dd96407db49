# depmap %postun: reload units; on erase the state directory goes too.
systemctl daemon-reload >/dev/null 2>&1 || :
if [ "$1" -eq 0 ]; then
    rm -rf /var/lib/depmap
fi
