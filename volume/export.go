package volume

import (
	"fmt"
	"strconv"
	"strings"
)

// A writer epoch identifies one writer of a volume: one run of a VM on one
// host. The catalog makes one epoch the volume's writer at a time, and the
// storage refuses writes that come under any other (docs/fencing.md). A
// client states its epoch in the NBD export name: "NAME@EPOCH". A plain
// "NAME" writes under epoch 0, which is accepted only while the volume has
// no writer.

// WriterExport returns the export name of volume name for writer epoch
// (just name for epoch 0).
func WriterExport(name string, epoch uint64) string {
	if epoch == 0 {
		return name
	}
	return name + "@" + strconv.FormatUint(epoch, 10)
}

// SplitExport splits an export name into the volume name and the writer
// epoch (0 when the name has none).
func SplitExport(export string) (name string, epoch uint64, err error) {
	name, e, ok := strings.Cut(export, "@")
	if !ok {
		return export, 0, nil
	}
	epoch, err = strconv.ParseUint(e, 10, 64)
	if err != nil || epoch == 0 || e[0] == '+' || (len(e) > 1 && e[0] == '0') {
		return "", 0, fmt.Errorf("export %q: the writer epoch after '@' must be a positive decimal number", export)
	}
	return name, epoch, nil
}
