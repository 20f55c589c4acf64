#!/usr/bin/env bash
# Build tgbackupd_<version>_all.deb from this repository with dpkg-deb alone. The package runs on
# Debian's own /usr/bin/python3 and depends on Debian's packages of every library, so apt installs it.
#   packaging/build-deb.sh [OUTPUT_DIRECTORY]     (default: dist/)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:-$repo/dist}" && cd "${1:-$repo/dist}" && pwd)
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$repo/tgbackupd/__init__.py")
[ -n "$version" ] || { echo "build-deb: no __version__ in tgbackupd/__init__.py" >&2; exit 1; }
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/tgbackupd"

install -d "$root/DEBIAN" "$root/usr/bin" "$root/usr/lib/python3/dist-packages/tgbackupd" \
    "$root/lib/systemd/system" "$root/usr/lib/sysusers.d" "$root/etc/tgbackupd" \
    "$root/usr/share/doc/tgbackupd"
install -m 0644 "$repo"/tgbackupd/*.py "$root/usr/lib/python3/dist-packages/tgbackupd/"
for command in tgbackupd tgbackupctl; do
    module=$([ "$command" = tgbackupd ] && echo cli || echo ctl)
    printf '#!/usr/bin/python3\nimport sys\n\nfrom tgbackupd.%s import main\n\nsys.exit(main())\n' "$module" \
        > "$root/usr/bin/$command"
    chmod 0755 "$root/usr/bin/$command"
done
install -m 0644 "$repo/systemd/tgbackupd.service" "$root/lib/systemd/system/tgbackupd.service"
install -m 0644 "$repo/systemd/tgbackupd.sysusers" "$root/usr/lib/sysusers.d/tgbackupd.conf"
# The packaged configuration lets the tgbackupctl group trigger backups; everything else as documented.
sed 's/^# control_group = ""$/control_group = "tgbackupctl"/' "$repo/config.example.toml" \
    > "$root/etc/tgbackupd/config.toml"
grep -q '^control_group = "tgbackupctl"$' "$root/etc/tgbackupd/config.toml" \
    || { echo "build-deb: config.example.toml lost its control_group line" >&2; exit 1; }
chmod 0640 "$root/etc/tgbackupd/config.toml"
install -m 0644 "$repo/README.md" "$root/usr/share/doc/tgbackupd/README.md"
install -m 0644 "$repo/packaging/debian/copyright" "$root/usr/share/doc/tgbackupd/copyright"
for script in postinst prerm postrm; do
    install -m 0755 "$repo/packaging/debian/$script" "$root/DEBIAN/$script"
done
echo /etc/tgbackupd/config.toml > "$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@SIZE@/$size/" "$repo/packaging/debian/control" > "$root/DEBIAN/control"

dpkg-deb --root-owner-group -Zxz --build "$root" "$out/tgbackupd_${version}_all.deb" >/dev/null
echo "$out/tgbackupd_${version}_all.deb"
