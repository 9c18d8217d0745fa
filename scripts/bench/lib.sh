# Functions the benchmark scripts share (sourced, not run).

# median: the median of the numbers on stdin, one per line.
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# of VARIANT FIELD: the median of FIELD's values on the lines of $work/runs that start with
# VARIANT (lines of "VARIANT field value field value ...").
of() { awk -v v="$1" -v f="$2" '$1 == v { for (i = 1; i <= NF; i++) if ($i == f) print $(i + 1) }' "$work/runs" | median; }

# routed_string NAME: the string attribute NAME of the routed ad in $routed.
routed_string() { echo "$routed" | sed -n "s/^$1 = \"\(.*\)\"\$/\1/p"; }

# stage_inputs SANDBOX JOBDIR FILE...: HTCondor's input transfer of FILE... into SANDBOX
# (relative names are in JOBDIR).
stage_inputs() {
    local sb=$1 jobdir=$2 f
    shift 2
    for f in "$@"; do
        case $f in /*) ;; *) f=$jobdir/$f ;; esac
        cp "$f" "$sb/"
    done
}
