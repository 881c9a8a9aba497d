// Package oci flattens the layers of an OCI (or Docker) image into one directory tree, as the
// image's root filesystem, and keeps what that tree on disk cannot hold when the process is
// not root: every entry's owner, group and full mode (set-id and sticky bits), its extended
// attributes (file capabilities among them) and the device nodes and FIFOs. A caller builds
// an ext4 image from the tree (mkfs.ext4 -d) and then writes Fixups into it (debugfs), so the
// result is the same with or without root.
//
// Layers are applied in order as tar streams, read once, without storing them: whiteouts
// (.wh.NAME) remove what lower layers created, opaque directories (.wh..wh..opq) hide a lower
// directory's content, hard links, symlinks, device nodes and FIFOs are kept.
//
// Layers are hostile input. No entry may write outside the tree: names with ".." elements or
// absolute names are refused, and so is any entry whose path goes through a symlink that an
// earlier entry created (the symlink could point anywhere), or a hard link to a name that is
// not in the tree. Entry counts, sizes, name lengths and extended attributes are bounded, and
// so is what the whole image unpacks to (Limits: bytes of file contents and entries, checked
// before anything past them is written).
// Every refusal is an *EntryError naming the layer and the entry; errors.Is(err, ErrUnsafe)
// holds for the path escapes.
package oci
