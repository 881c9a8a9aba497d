#!/bin/sh
# fill-digests.sh MANIFEST...
#
# Writes into each base-image manifest the sha256 and size of the files it names, read from
# disk: a relative "url" is a file next to the manifest, an absolute path or a file:// URL is
# that file. A manifest that names an http(s) URL is left unchanged and the script fails:
# download the file next to the manifest first. The manifest must keep one key per line, as
# the examples do, with each file's "url" inside its own object.
set -eu

if [ "$#" -eq 0 ]; then
	echo "usage: $0 MANIFEST..." >&2
	exit 2
fi
if command -v sha256sum >/dev/null 2>&1; then
	hash=sha256sum
elif command -v shasum >/dev/null 2>&1; then
	hash="shasum -a 256"
else
	echo "$0: needs sha256sum (coreutils) or shasum" >&2
	exit 1
fi

for manifest in "$@"; do
	dir=$(dirname -- "$manifest")
	tmp=$(mktemp "$manifest.XXXXXX")
	if ! awk -v dir="$dir" -v hash="$hash" '
		function quote(s) { gsub(/\047/, "\047\\\047\047", s); return "\047" s "\047" }
		# flush rewrites the buffered lines of one object from the file its "url" names.
		function flush(   i, u, p, sum, size, cmd) {
			u = ""
			for (i = 1; i <= n; i++) {
				if (buf[i] ~ /"url"[ \t]*:/) {
					u = buf[i]
					sub(/^[^:]*:[ \t]*"/, "", u)
					sub(/".*$/, "", u)
				}
			}
			if (u != "") {
				sub(/^file:\/\/(localhost)?/, "", u)
				if (u ~ /^[A-Za-z][A-Za-z0-9+.-]*:/) {
					printf "%s: %s is not a local file: download it next to the manifest and name it by a relative url\n", FILENAME, u > "/dev/stderr"
					failed = 1
				} else {
					p = (u ~ /^\//) ? u : dir "/" u
					sum = ""; size = ""
					cmd = hash " < " quote(p) " 2>/dev/null"
					cmd | getline sum
					close(cmd)
					sub(/[ \t].*$/, "", sum)
					cmd = "wc -c < " quote(p) " 2>/dev/null"
					cmd | getline size
					close(cmd)
					gsub(/[ \t]/, "", size)
					if (length(sum) != 64 || sum !~ /^[0-9a-f]+$/ || size !~ /^[0-9]+$/) {
						printf "%s: cannot read %s\n", FILENAME, p > "/dev/stderr"
						failed = 1
					} else {
						for (i = 1; i <= n; i++) {
							sub(/"sha256"[ \t]*:[ \t]*"[^"]*"/, "\"sha256\": \"" sum "\"", buf[i])
							sub(/"size"[ \t]*:[ \t]*[0-9]+/, "\"size\": " size, buf[i])
						}
					}
				}
			}
			for (i = 1; i <= n; i++) print buf[i]
			n = 0
		}
		/[{}]/ { flush(); print; next }
		{ buf[++n] = $0 }
		END { flush(); exit failed }
	' "$manifest" >"$tmp"; then
		rm -f -- "$tmp"
		echo "$0: $manifest left unchanged" >&2
		exit 1
	fi
	chmod 644 "$tmp"
	mv -- "$tmp" "$manifest"
done
