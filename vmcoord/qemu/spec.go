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

// Disk is one VM disk, attached as virtio-blk over NBD.
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
		if _, err := d.server(); err != nil {
			bad("Disks[%d].Server: %v", i, err)
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

// nodeName is the block node name of disk i (BLOCK_IO_ERROR names it).
func nodeName(i int) string { return "disk" + strconv.Itoa(i) }

// deviceID is the qdev id of the virtio-blk device of disk i.
func deviceID(i int) string { return "vdisk" + strconv.Itoa(i) }

// Args returns QEMU's command line (without the program name) for s, with
// its run directory dir (whose files are named by QMPSocketFile, SerialLogFile
// and QEMULogFile): TCG, no default devices, no display, QMP on a unix socket, COM1
// to a file, every disk a -blockdev nbd node with reconnect-delay under a
// virtio-blk-pci device with werror=stop,rerror=stop. QEMU starts paused
// (-S): Start resumes it once it watches its events.
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
		"-S",
	}
	if s.Incoming {
		args = append(args, "-incoming", "defer")
	}
	delay := int64(0)
	if s.ReconnectDelay > 0 {
		delay = int64((s.ReconnectDelay + time.Second - 1) / time.Second)
	}
	for i, d := range s.Disks {
		server, _ := d.server() // checked by Validate
		node := map[string]any{
			"driver":          "nbd",
			"node-name":       nodeName(i),
			"server":          server,
			"export":          d.Export,
			"reconnect-delay": delay,
		}
		if d.ReadOnly {
			node["read-only"] = true
		}
		b, err := json.Marshal(node)
		if err != nil {
			return nil, fmt.Errorf("qemu: disk %d: %w", i, err)
		}
		dev := "virtio-blk-pci,id=" + deviceID(i) + ",drive=" + nodeName(i) + ",werror=stop,rerror=stop"
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
