// Package safedir works inside a directory that other users must not be able to redirect.
//
// smartvm runs as root with its runtime root in /dev/shm and its cache in /tmp, directories
// that every user on the host can write. A path there is only as trustworthy as every
// directory on the way to it, and a path that is resolved again after a check can lead
// somewhere else by then. This package closes both gaps:
//
//   - OpenTrusted walks a path from "/" one component at a time without following symlinks,
//     creating what is missing with its own owner and mode whatever the umask, and refuses a
//     component that is a symlink, belongs to another user (other than root), or is writable
//     by others without being a sticky directory owned by root (such as /tmp or /dev/shm).
//     It returns a Dir that holds the final directory open.
//   - Every operation of a Dir resolves names relative to that open directory with
//     openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV),
//     then acts with unlinkat, renameat, mkdirat and fstat on the descriptors it got, so a
//     rename or a symlink swap after a check cannot redirect a read, a write or a removal.
//   - RemoveAll never follows a symlink (it removes the link), never crosses onto another
//     filesystem, and stops at an entry owned by anybody but the Dir's owner.
//
// Paths under a Dir may still be handed to other programs (Firecracker takes its socket and log
// paths on its command line): that is safe because OpenTrusted made sure no other user can
// change any directory on the way to them.
package safedir
