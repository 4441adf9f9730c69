# Shared by the integration scripts (sourced): results, free ports and JSON from stdin.
#   check NAME 'shell test'    prints "ok   NAME" or "FAIL NAME" and counts failures in $failures
#   read -r A B < <(free_ports 2)
#   curl ... | json 'd["key"]'

failures=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; failures=$((failures + 1)); fi; }
# free_ports N: N distinct loopback ports nothing listens on (the sockets are held together while
# the kernel picks them, so two calls' worth can never name the same port twice).
free_ports() {
  python3 -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}
json() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }
# Skips (exit 77, through the script's own `skip MESSAGE`) unless every tool named is on PATH, and
# unless the model ($1), the HC18 folder ($2) and the sample DICOM folder ($3) are there.
need_tools() { for tool in "$@"; do command -v "$tool" >/dev/null || skip "$tool not found (apt-get install dcmtk curl python3)"; done; }
need_data() {
  [ -f "$1" ] || skip "model $1 not found"
  [ -f "$2/training_set_pixel_size_and_HC.csv" ] || skip "HC18 data not found in $2"
  [ -f "$3/OBXXXX1A.dcm" ] || skip "sample DICOM files not found in $3"
}
