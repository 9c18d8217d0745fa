#!/usr/bin/env bash
# Release artifacts from one command, in target/dist/:
#   vm-capsule, capsule-init      static (glibc, static-pie), stripped; checked with ldd and file
#   root/                         the installed tree: /usr/libexec/vm-capsule (programs + the
#                                 hook and libvirt-xml links), /etc/condor/config.d/
#                                 50-vm-capsule.conf, man pages, bash/zsh/fish completions,
#                                 /usr/share/vm-capsule (guest pieces when guest/ exists, the
#                                 default configuration), docs and LICENSE
#   maintainer/                   the packages' maintainer scripts (packaging/maintainer-scripts.sh)
#   vm-capsule_<v>-1_amd64.deb    cargo-deb, from that tree
#   vm-capsule-<v>-1.x86_64.rpm   rpmbuild (packaging/vm-capsule.spec), from that tree
#
# Needs: cargo, dpkg-deb, rpmbuild (Debian: apt-get install rpm), file, ldd; installs cargo-deb
# with `cargo install` when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
export CARGO_TARGET_DIR=$REPO/target
TRIPLE=x86_64-unknown-linux-gnu
OUT=$REPO/target/dist
ROOT=$OUT/root
LIBEXEC=/usr/libexec/vm-capsule
CARGO_DEB_VERSION=3.8.0

say() { echo "dist: $*" >&2; }
die() { say "error: $*"; exit 1; }

for tool in dpkg-deb rpmbuild file ldd gzip; do
    command -v "$tool" >/dev/null || die "$tool is missing (Debian: apt-get install dpkg-dev rpm file)"
done
if ! cargo deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
    say "installing cargo-deb $CARGO_DEB_VERSION"
    cargo install --locked --quiet cargo-deb --version "$CARGO_DEB_VERSION"
fi

say "building the static programs (profile dist)"
cargo build --locked --quiet --profile dist --target "$TRIPLE" -p vm-capsule -p capsule-guest
BIN=$REPO/target/$TRIPLE/dist
version=$("$BIN/vm-capsule" --version | awk '{print $2}')

rm -rf "$OUT"
mkdir -p "$OUT"
for prog in vm-capsule capsule-init; do
    # Both must run where no libraries of ours exist: a minimal guest, any execute node.
    ldd_out=$(ldd "$BIN/$prog" 2>&1 || true)
    case $ldd_out in
        *"statically linked"* | *"not a dynamic executable"*) ;;
        *) die "$prog is dynamically linked: $ldd_out" ;;
    esac
    file_out=$(file -b "$BIN/$prog")
    case $file_out in
        *static*", stripped"*) ;;
        *) die "$prog is not a stripped static executable: $file_out" ;;
    esac
    cp "$BIN/$prog" "$OUT/$prog"
    say "$prog: $(stat -c %s "$BIN/$prog") bytes; ldd: $ldd_out; file: $file_out"
done

say "staging the installed tree in $ROOT"
install -d -m 0755 "$ROOT$LIBEXEC"
install -m 0755 "$BIN/vm-capsule" "$BIN/capsule-init" "$ROOT$LIBEXEC/"
# The hook links and the configuration, exactly as `install-hooks` makes them on a node.
"$ROOT$LIBEXEC/vm-capsule" install-hooks --destdir "$ROOT" "$LIBEXEC" \
    --config-file /etc/condor/config.d/50-vm-capsule.conf
install -d -m 0755 "$ROOT/usr/share/vm-capsule"
cp "$ROOT/etc/condor/config.d/50-vm-capsule.conf" "$ROOT/usr/share/vm-capsule/50-vm-capsule.conf.default"
if [ -d guest ]; then
    cp -r guest "$ROOT/usr/share/vm-capsule/guest"
    chmod -R u=rwX,go=rX "$ROOT/usr/share/vm-capsule/guest"
fi
gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
"$ROOT$LIBEXEC/vm-capsule" generate --man-dir "$gen/man" --completions-dir "$gen/comp"
install -d -m 0755 "$ROOT/usr/share/man/man1"
for page in "$gen"/man/*.1; do
    gzip -9n < "$page" > "$ROOT/usr/share/man/man1/$(basename "$page").gz"
done
install -d -m 0755 "$ROOT/usr/share/man/man5"
gzip -9n < "$gen/man/vm-capsule-knobs.5" > "$ROOT/usr/share/man/man5/vm-capsule-knobs.5.gz"
install -D -m 0644 "$gen/comp/vm-capsule.bash" "$ROOT/usr/share/bash-completion/completions/vm-capsule"
install -D -m 0644 "$gen/comp/_vm-capsule" "$ROOT/usr/share/zsh/vendor-completions/_vm-capsule"
install -D -m 0644 "$gen/comp/vm-capsule.fish" "$ROOT/usr/share/fish/vendor_completions.d/vm-capsule.fish"
install -D -m 0644 README.md "$ROOT/usr/share/doc/vm-capsule/README.md"
install -D -m 0644 docs/ADMIN.md "$ROOT/usr/share/doc/vm-capsule/ADMIN.md"
install -D -m 0644 docs/TEMPLATES.md "$ROOT/usr/share/doc/vm-capsule/TEMPLATES.md"
install -D -m 0644 LICENSE "$ROOT/usr/share/doc/vm-capsule/LICENSE"
# Directories every job owner writes (the .deb makes them in postinst, the .rpm owns them).
install -d -m 1777 "$ROOT/var/log/vm-capsule" "$ROOT/var/lib/vm-capsule/scratch"
install -d -m 0755 "$ROOT/var/lib/vm-capsule/template"

# Maintainer scripts: refuse removal and upgrades while jobs routed through vm-capsule run.
bash packaging/maintainer-scripts.sh "$OUT/maintainer"

say "building the .deb (cargo-deb)"
cargo deb --quiet --no-build --no-strip -p vm-capsule --target "$TRIPLE" --output "$OUT/" >/dev/null
say "building the .rpm (rpmbuild)"
rpmtop=$(mktemp -d)
rpmbuild --quiet -bb \
    --define "_topdir $rpmtop" \
    --define "stage $ROOT" \
    --define "pkgversion $version" \
    --define "scripts $OUT/maintainer/rpm" \
    packaging/vm-capsule.spec
cp "$rpmtop"/RPMS/x86_64/*.rpm "$OUT/"
rm -rf "$rpmtop"

say "checking both packages against the staged tree"
deb=$(ls "$OUT"/*.deb)
rpmfile=$(ls "$OUT"/*.rpm)
check=$(mktemp -d)
trap 'rm -rf "$gen" "$check"' EXIT
dpkg-deb -x "$deb" "$check/deb"
rpm --root "$check/rpm" --initdb
rpm --root "$check/rpm" -i --nodeps --noscripts --nosignature "$rpmfile"
staged=$(cd "$ROOT" && find . \( -type f -o -type l \) | sort)
for tree in deb rpm; do
    while IFS= read -r f; do
        case $tree:$f in
            # zsh completions live in site-functions on RHEL.
            rpm:./usr/share/zsh/vendor-completions/_vm-capsule) f=./usr/share/zsh/site-functions/_vm-capsule ;;
        esac
        [ -e "$check/$tree/$f" ] || [ -L "$check/$tree/$f" ] || die "$tree package lacks ${f#.}"
    done <<< "$staged"
    link=$(readlink "$check/$tree$LIBEXEC/vm-capsule-translate")
    [ "$link" = vm-capsule ] || die "$tree: vm-capsule-translate -> $link, not a link to vm-capsule"
done
for d in var/log/vm-capsule var/lib/vm-capsule/scratch; do
    mode=$(stat -c %a "$check/rpm/$d")
    [ "$mode" = 1777 ] || die "rpm: /$d has mode $mode, not 1777"
done
dpkg-deb -I "$deb" postinst | grep -q 'install -d -m 1777' || die "deb: postinst does not make the 1777 dirs"
for script in preinst prerm; do
    dpkg-deb -I "$deb" "$script" | grep -q 'vm_capsule_check_routed_jobs' ||
        die "deb: $script does not check for routed jobs"
done
for tag in PREIN PREUN; do
    rpm -qp --qf "%{$tag}" "$rpmfile" | grep -q 'vm_capsule_check_routed_jobs' ||
        die "rpm: $tag does not check for routed jobs"
done
say "ok: $(echo "$staged" | wc -l) files in both packages"

ls -1 "$OUT"/*.deb "$OUT"/*.rpm "$OUT/vm-capsule" "$OUT/capsule-init"
