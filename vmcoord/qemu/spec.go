package qemu

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/tandem-project/tandem/vmcoord/pidfile"
)

// Defaults of Spec fields left zero.
const (
	// DefaultVCPUs is the number of virtual CPUs.
	DefaultVCPUs = 1
	// DefaultMemoryMiB is the guest's RAM.
	DefaultMemoryMiB = 128
	// DefaultMachine is QEMU's machine type (i440FX; an alias of the
	// newest versioned pc-i440fx type of the QEMU that runs it).
	DefaultMachine = "pc"
	// DefaultReconnectDelay is how long QEMU's NBD client holds I/O while it
	// reconnects to a lost server before failing it (which, with
	// werror=stop, pauses the VM).
	DefaultReconnectDelay = 5 * time.Second
)

// Files in a VM's run directory.
const (
	// QMPSocketFile is QEMU's QMP socket.
	QMPSocketFile = "qmp.sock"
	// SerialLogFile receives the guest's first serial port (COM1).
	SerialLogFile = "serial.log"
	// QEMULogFile receives QEMU's own stdout and stderr.
	QEMULogFile = "qemu.log"
)

// maxSocketPath is the longest unix socket path Linux takes (sun_path less
// its terminating NUL).
const maxSocketPath = 107

// Disk is one VM disk, attached as virtio-blk: an NBD export (Server and
// Export) or, with File set, an image file.
type Disk struct {
	// Server is the NBD server: "host:port" for TCP ("[::1]:10809" for
	// IPv6), or the path of a unix socket (any value containing a '/').
	Server string
	// Export is the NBD export name, sent to the server unchanged: tandem
	// exports may carry a writer epoch, as in "vol0@1234".
	Export string
	// ReadOnly opens the export read-only (needed for a read-only export,
	// which QEMU otherwise refuses to open).
	ReadOnly bool
	// File, if set, is the absolute path of an image file to open instead
	// of an NBD export, in Format: FormatRaw (the default) or FormatQcow2.
	File   string
	Format string
	// Node is the disk's block node name (default "diskN" for disk N):
	// 1 to 31 letters, digits, '-' or '_', starting with a letter.
	Node string
}

// Image formats of a Disk's File.
const (
	FormatRaw   = "raw"
	FormatQcow2 = "qcow2"
)

// validNode reports whether n is a QEMU node name we accept.
func validNode(n string) bool {
	if len(n) < 1 || len(n) > 31 || !(n[0] >= 'a' && n[0] <= 'z' || n[0] >= 'A' && n[0] <= 'Z') {
		return false
	}
	for _, r := range n {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// check reports what is wrong with d.
func (d Disk) check() error {
	if d.Node != "" && !validNode(d.Node) {
		return fmt.Errorf("node name %q: want 1 to 31 letters, digits, '-' or '_', starting with a letter", d.Node)
	}
	if d.File == "" {
		_, err := d.server()
		return err
	}
	if !filepath.IsAbs(d.File) {
		return fmt.Errorf("file %q: want an absolute path", d.File)
	}
	if d.Format != "" && d.Format != FormatRaw && d.Format != FormatQcow2 {
		return fmt.Errorf("format %q: want %q or %q", d.Format, FormatRaw, FormatQcow2)
	}
	return nil
}

// BlockdevOptions returns the blockdev-add options (also the -blockdev
// value) of d as node node, with the NBD client's reconnect delay (see
// Spec.ReconnectDelay; zero means DefaultReconnectDelay). A raw file is a
// single "file" node; a qcow2 file a "qcow2" node over an implicit "file"
// child (blockdev-del removes both).
func (d Disk) BlockdevOptions(node string, reconnect time.Duration) (map[string]any, error) {
	if err := d.check(); err != nil {
		return nil, fmt.Errorf("qemu: disk %s: %w", node, err)
	}
	var o map[string]any
	switch {
	case d.File != "" && d.Format == FormatQcow2:
		o = map[string]any{"driver": "qcow2", "node-name": node, "file": map[string]any{"driver": "file", "filename": d.File}}
	case d.File != "":
		o = map[string]any{"driver": "file", "node-name": node, "filename": d.File}
	default:
		if reconnect == 0 {
			reconnect = DefaultReconnectDelay
		}
		delay := int64(0)
		if reconnect > 0 {
			delay = int64((reconnect + time.Second - 1) / time.Second)
		}
		server, _ := d.server() // checked
		o = map[string]any{"driver": "nbd", "node-name": node, "server": server, "export": d.Export, "reconnect-delay": delay}
	}
	if d.ReadOnly {
		o["read-only"] = true
	}
	return o, nil
}

// Spec describes one VM: what QEMU runs. Zero fields take the defaults
// above.
type Spec struct {
	// Name names the VM in logs and in QEMU (-name guest=Name): 1 to 64
	// letters, digits, '.', '_' or '-'.
	Name string
	// VCPUs is the number of virtual CPUs.
	VCPUs int
	// MemoryMiB is the guest's RAM in MiB.
	MemoryMiB int
	// Machine is QEMU's machine type. Both ends of a migration must use the
	// same one: across QEMU versions, name a versioned type such as
	// "pc-i440fx-7.2" rather than the alias "pc".
	Machine string
	// Disks are the VM's disks, in PCI order. Unless Kernel is set, the
	// first one is the boot disk (bootindex 0).
	Disks []Disk
	// Kernel, if set, boots this kernel image directly (-kernel) with
	// Initrd (optional) and the kernel command line Cmdline.
	Kernel, Initrd, Cmdline string
	// Incoming starts QEMU as a live-migration destination: -incoming
	// defer, paused, waiting for Process.MigrateIncoming.
	Incoming bool
	// ReconnectDelay is how long QEMU's NBD client keeps I/O waiting while
	// it reconnects to a lost server (QEMU's reconnect-delay, whole
	// seconds, rounded up); after it, I/O fails and the VM pauses on the
	// error (werror=stop, rerror=stop) until resumed. Zero means
	// DefaultReconnectDelay, negative means no reconnection: I/O fails at
	// once.
	ReconnectDelay time.Duration
	// ExtraArgs are appended to QEMU's command line (tests use
	// "-no-reboot").
	ExtraArgs []string
}

// validName reports whether name is 1 to 64 letters, digits, '.', '_' or
// '-'.
func validName(name string) bool {
	if len(name) < 1 || len(name) > 64 {
		return false
	}
	for _, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-'
		if !ok {
			return false
		}
	}
	return true
}

// withDefaults returns s with zero fields set to their defaults.
func (s Spec) withDefaults() Spec {
	if s.VCPUs == 0 {
		s.VCPUs = DefaultVCPUs
	}
	if s.MemoryMiB == 0 {
		s.MemoryMiB = DefaultMemoryMiB
	}
	if s.Machine == "" {
		s.Machine = DefaultMachine
	}
	if s.ReconnectDelay == 0 {
		s.ReconnectDelay = DefaultReconnectDelay
	}
	return s
}

// Validate reports every problem with s (after defaults), each naming its
// field.
func (s Spec) Validate() error {
	s = s.withDefaults()
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf("qemu: spec: "+format, args...)) }
	if !validName(s.Name) {
		bad("Name %q: want 1 to 64 letters, digits, '.', '_' or '-'", s.Name)
	}
	if s.VCPUs < 1 || s.VCPUs > 255 {
		bad("VCPUs %d not in [1, 255]", s.VCPUs)
	}
	if s.MemoryMiB < 1 {
		bad("MemoryMiB %d: want at least 1", s.MemoryMiB)
	}
	if strings.ContainsAny(s.Machine, ",= ") {
		bad("Machine %q: want a machine type name", s.Machine)
	}
	for i, d := range s.Disks {
		if err := d.check(); err != nil {
			bad("Disks[%d]: %v", i, err)
		}
	}
	if s.Kernel == "" && (s.Initrd != "" || s.Cmdline != "") {
		bad("Initrd and Cmdline need Kernel")
	}
	return errors.Join(errs...)
}

// server returns the disk's server as QEMU's SocketAddress.
func (d Disk) server() (map[string]any, error) {
	if strings.Contains(d.Server, "/") {
		if len(d.Server) > maxSocketPath {
			return nil, fmt.Errorf("unix socket path %q longer than %d bytes", d.Server, maxSocketPath)
		}
		return map[string]any{"type": "unix", "path": d.Server}, nil
	}
	host, port, err := net.SplitHostPort(d.Server)
	if err != nil {
		return nil, fmt.Errorf("%q is neither host:port nor a socket path: %w", d.Server, err)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return nil, fmt.Errorf("%q: bad port %q", d.Server, port)
	}
	if host == "" {
		return nil, fmt.Errorf("%q: no host", d.Server)
	}
	return map[string]any{"type": "inet", "host": host, "port": port}, nil
}

// nodeName is the default block node name of disk i (BLOCK_IO_ERROR names
// it).
func nodeName(i int) string { return "disk" + strconv.Itoa(i) }

// node returns the block node name of disk i of s.
func (s Spec) node(i int) string {
	if n := s.Disks[i].Node; n != "" {
		return n
	}
	return nodeName(i)
}

// deviceID is the qdev id of the virtio-blk device of disk i.
func deviceID(i int) string { return "vdisk" + strconv.Itoa(i) }

// Args returns QEMU's command line (without the program name) for s, with
// its run directory dir (whose files are named by QMPSocketFile,
// SerialLogFile and QEMULogFile): TCG, no default devices, no display, QMP
// on a unix socket, COM1 to a file, its pid in pidfile.Name, every disk a
// -blockdev nbd node with reconnect-delay under a virtio-blk-pci device
// with werror=stop,rerror=stop. QEMU starts paused (-S): Start resumes it
// once it watches its events.
func (s Spec) Args(dir string) ([]string, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	s = s.withDefaults()
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("qemu: run directory: %w", err)
	}
	sock := filepath.Join(dir, QMPSocketFile)
	if len(sock) > maxSocketPath {
		return nil, fmt.Errorf("qemu: QMP socket path %q longer than %d bytes: use a shorter run directory", sock, maxSocketPath)
	}
	args := []string{
		"-name", "guest=" + s.Name,
		"-machine", s.Machine,
		"-accel", "tcg",
		"-nodefaults", "-no-user-config", "-display", "none",
		"-msg", "timestamp=on",
		"-m", strconv.Itoa(s.MemoryMiB),
		"-smp", strconv.Itoa(s.VCPUs),
		"-chardev", "socket,id=qmp,server=on,wait=off,path=" + escapeOpt(sock),
		"-mon", "chardev=qmp,mode=control",
		"-chardev", "file,id=serial0,path=" + escapeOpt(filepath.Join(dir, SerialLogFile)),
		"-serial", "chardev:serial0",
		// QEMU records its own pid, before it opens any socket: a QEMU
		// whose starter was killed before it could record the pid is
		// still found (and killed) by the next run (package pidfile).
		"-pidfile", filepath.Join(dir, pidfile.Name),
		"-S",
	}
	if s.Incoming {
		args = append(args, "-incoming", "defer")
	}
	for i, d := range s.Disks {
		node, err := d.BlockdevOptions(s.node(i), s.ReconnectDelay)
		if err != nil {
			return nil, err
		}
		b, err := json.Marshal(node)
		if err != nil {
			return nil, fmt.Errorf("qemu: disk %d: %w", i, err)
		}
		dev := "virtio-blk-pci,id=" + deviceID(i) + ",drive=" + s.node(i) + ",werror=stop,rerror=stop"
		if i == 0 && s.Kernel == "" {
			dev += ",bootindex=0"
		}
		args = append(args, "-blockdev", string(b), "-device", dev)
	}
	if s.Kernel != "" {
		args = append(args, "-kernel", s.Kernel)
		if s.Initrd != "" {
			args = append(args, "-initrd", s.Initrd)
		}
		if s.Cmdline != "" {
			args = append(args, "-append", s.Cmdline)
		}
	}
	return append(args, s.ExtraArgs...), nil
}

// escapeOpt escapes a value for QEMU's key=value option syntax, where a
// comma is written twice.
func escapeOpt(v string) string { return strings.ReplaceAll(v, ",", ",,") }
