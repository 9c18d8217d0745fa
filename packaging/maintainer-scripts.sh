#!/usr/bin/env bash
# Write the packages' maintainer scripts into OUT: OUT/deb/{preinst,prerm,postinst} for
# cargo-deb, OUT/rpm/{pre,preun} for the rpm spec's %pre and %preun. The routed-jobs check
# (routed-jobs.sh) is written into each where a line reads #ROUTED_JOBS_CHECK#: a preinst
# runs before the package's files are there, so it cannot source one.
# Usage: packaging/maintainer-scripts.sh OUT
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: maintainer-scripts.sh OUT}
mkdir -p "$out/deb" "$out/rpm"
fill() {
    local src=$1 dest=$2 line
    while IFS= read -r line || [ -n "$line" ]; do
        if [ "$line" = "#ROUTED_JOBS_CHECK#" ]; then
            cat "$here/routed-jobs.sh"
        else
            printf '%s\n' "$line"
        fi
    done < "$src" > "$dest"
}
fill "$here/deb/preinst.in" "$out/deb/preinst"
fill "$here/deb/prerm.in" "$out/deb/prerm"
cp "$here/deb/postinst" "$out/deb/postinst"
fill "$here/rpm/pre.in" "$out/rpm/pre"
fill "$here/rpm/preun.in" "$out/rpm/preun"
chmod 0755 "$out"/deb/*
