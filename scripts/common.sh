# common.sh - sourced by scripts/*: installs missing Debian packages and builds into build*/.
# Every script works from a fresh clone on a fresh Debian machine: it checks what is missing,
# installs it with apt-get when run as root, and otherwise prints the exact command to run.

TFS_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The packages needed to build and test throttlefs.
TFS_PACKAGES=(build-essential meson ninja-build pkg-config libfuse3-dev fuse3 libcmocka-dev
	attr rsync git clang-format)

tfs_need_packages() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
			missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	if [ "$(id -u)" -ne 0 ]; then
		echo "missing Debian packages; run: sudo apt-get install -y ${missing[*]}" >&2
		exit 1
	fi
	echo "installing missing Debian packages: ${missing[*]}" >&2
	apt-get update -qq >&2 || { echo "apt-get update failed" >&2; exit 1; }
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 ||
		{ echo "apt-get install ${missing[*]} failed" >&2; exit 1; }
}

# tfs_build DIR [meson setup options...]: configure DIR once, then build it.
tfs_build() {
	local dir=$1
	shift
	if [ ! -f "$TFS_TOP/$dir/build.ninja" ]; then
		meson setup "$TFS_TOP/$dir" "$TFS_TOP" "$@" >"$TFS_TOP/$dir.setup.log" 2>&1 ||
			{ cat "$TFS_TOP/$dir.setup.log" >&2; echo "meson setup $dir failed" >&2; return 1; }
	fi
	ninja -C "$TFS_TOP/$dir" >"$TFS_TOP/$dir.ninja.log" 2>&1 ||
		{ tail -50 "$TFS_TOP/$dir.ninja.log" >&2; echo "build of $dir failed" >&2; return 1; }
}

# tfs_unmount_below DIR: lazily unmount every FUSE mount below DIR (cleanup after a test or
# demo that was interrupted), deepest first.
tfs_unmount_below() {
	local root=$1 m
	[ -n "$root" ] || return 0
	awk -v r="$root/" '$3 ~ /^fuse/ && index($2, r) == 1 {print $2}' /proc/mounts |
		sort -r | while read -r m; do
		fusermount3 -uz "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
	done
}
