package qemu

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"
)

// argAfter returns the values that follow each occurrence of flag in args.
func argAfter(args []string, flag string) []string {
	var vs []string
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			vs = append(vs, args[i+1])
		}
	}
	return vs
}

func TestArgs(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec Spec
		dir  string
		// blockdevs are the -blockdev values (JSON, compared as objects),
		// devices the -device values, want other flag values.
		blockdevs []string
		devices   []string
		want      map[string][]string
		has, not  []string
	}{
		{
			name: "defaults, one TCP disk with a writer epoch",
			spec: Spec{Name: "vm1", Disks: []Disk{{Server: "127.0.0.1:10809", Export: "vol0@1234"}}},
			dir:  "/run/vm1",
			blockdevs: []string{`{"driver":"nbd","node-name":"disk0","export":"vol0@1234","reconnect-delay":5,
				"server":{"type":"inet","host":"127.0.0.1","port":"10809"}}`},
			devices: []string{"virtio-blk-pci,id=vdisk0,drive=disk0,werror=stop,rerror=stop,bootindex=0"},
			want: map[string][]string{
				"-name": {"guest=vm1"}, "-machine": {"pc"}, "-accel": {"tcg"}, "-m": {"128"}, "-smp": {"1"},
				"-display": {"none"}, "-mon": {"chardev=qmp,mode=control"}, "-serial": {"chardev:serial0"},
				"-chardev": {"socket,id=qmp,server=on,wait=off,path=/run/vm1/qmp.sock", "file,id=serial0,path=/run/vm1/serial.log"},
				"-pidfile": {"/run/vm1/qemu.pid"},
			},
			has: []string{"-nodefaults", "-no-user-config", "-S"},
			not: []string{"-incoming", "-kernel"},
		},
		{
			name: "unix socket disks, commas in paths, kernel boot, incoming",
			spec: Spec{
				Name: "vm.2", VCPUs: 2, MemoryMiB: 64, Machine: "pc-i440fx-7.2",
				Disks: []Disk{
					{Server: "/run/tandem/nbd,1.sock", Export: "a@1"},
					{Server: "[::1]:10809", Export: ""},
				},
				Kernel: "/boot/vmlinuz", Initrd: "/boot/initrd", Cmdline: "console=ttyS0 quiet",
				Incoming: true, ReconnectDelay: 1500 * time.Millisecond,
				ExtraArgs: []string{"-no-reboot"},
			},
			dir: "/run/a,b",
			blockdevs: []string{
				`{"driver":"nbd","node-name":"disk0","export":"a@1","reconnect-delay":2,"server":{"type":"unix","path":"/run/tandem/nbd,1.sock"}}`,
				`{"driver":"nbd","node-name":"disk1","export":"","reconnect-delay":2,"server":{"type":"inet","host":"::1","port":"10809"}}`,
			},
			devices: []string{
				"virtio-blk-pci,id=vdisk0,drive=disk0,werror=stop,rerror=stop",
				"virtio-blk-pci,id=vdisk1,drive=disk1,werror=stop,rerror=stop",
			},
			want: map[string][]string{
				"-m": {"64"}, "-smp": {"2"}, "-machine": {"pc-i440fx-7.2"}, "-incoming": {"defer"},
				"-kernel": {"/boot/vmlinuz"}, "-initrd": {"/boot/initrd"}, "-append": {"console=ttyS0 quiet"},
				"-chardev": {"socket,id=qmp,server=on,wait=off,path=/run/a,,b/qmp.sock", "file,id=serial0,path=/run/a,,b/serial.log"},
			},
			has: []string{"-no-reboot", "-S"},
		},
		{
			name:      "no reconnection",
			spec:      Spec{Name: "vm", Disks: []Disk{{Server: "h:1", Export: "e"}}, ReconnectDelay: -1},
			dir:       "/r",
			blockdevs: []string{`{"driver":"nbd","node-name":"disk0","export":"e","reconnect-delay":0,"server":{"type":"inet","host":"h","port":"1"}}`},
			devices:   []string{"virtio-blk-pci,id=vdisk0,drive=disk0,werror=stop,rerror=stop,bootindex=0"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args, err := tc.spec.Args(tc.dir)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("qemu-system-x86_64 %s", strings.Join(args, " "))
			got := argAfter(args, "-blockdev")
			if len(got) != len(tc.blockdevs) {
				t.Fatalf("-blockdev %q, want %d", got, len(tc.blockdevs))
			}
			for i := range got {
				var g, w any
				if err := json.Unmarshal([]byte(got[i]), &g); err != nil {
					t.Fatalf("-blockdev %s: %v", got[i], err)
				}
				if err := json.Unmarshal([]byte(tc.blockdevs[i]), &w); err != nil {
					t.Fatal(err)
				}
				gj, _ := json.Marshal(g)
				wj, _ := json.Marshal(w)
				if string(gj) != string(wj) {
					t.Errorf("-blockdev %s\nwant      %s", gj, wj)
				}
			}
			if got := argAfter(args, "-device"); !slices.Equal(got, tc.devices) {
				t.Errorf("-device %q\nwant    %q", got, tc.devices)
			}
			for flag, want := range tc.want {
				if got := argAfter(args, flag); !slices.Equal(got, want) {
					t.Errorf("%s %q, want %q", flag, got, want)
				}
			}
			for _, f := range tc.has {
				if !slices.Contains(args, f) {
					t.Errorf("no %s", f)
				}
			}
			for _, f := range tc.not {
				if slices.Contains(args, f) {
					t.Errorf("unexpected %s", f)
				}
			}
		})
	}
}

func TestValidate(t *testing.T) {
	long := "/" + strings.Repeat("x", 120)
	for _, tc := range []struct {
		spec Spec
		want []string // substrings of the error; none: valid
	}{
		{spec: Spec{Name: "ok"}},
		{spec: Spec{Name: ""}, want: []string{"Name"}},
		{spec: Spec{Name: "a,b"}, want: []string{"Name"}},
		{spec: Spec{Name: "vm", VCPUs: -1, MemoryMiB: -5}, want: []string{"VCPUs", "MemoryMiB"}},
		{spec: Spec{Name: "vm", Machine: "pc,accel=kvm"}, want: []string{"Machine"}},
		{spec: Spec{Name: "vm", Disks: []Disk{{Server: "nohost"}, {Server: "h:0"}, {Server: ":80"}, {Server: long}}},
			want: []string{"Disks[0]", "Disks[1]", "Disks[2]", "Disks[3]"}},
		{spec: Spec{Name: "vm", Cmdline: "x"}, want: []string{"need Kernel"}},
	} {
		err := tc.spec.Validate()
		if len(tc.want) == 0 {
			if err != nil {
				t.Errorf("Validate(%+v): %v", tc.spec, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("Validate(%+v) = nil, want %v", tc.spec, tc.want)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Validate(%+v) = %v, want it to name %s", tc.spec, err, w)
			}
		}
	}
	if _, err := (Spec{Name: "vm"}).Args("/" + strings.Repeat("d", 100)); err == nil || !strings.Contains(err.Error(), "QMP socket path") {
		t.Errorf("Args with a long run directory: %v", err)
	}
}

func TestMigrationHost(t *testing.T) {
	for _, tt := range []struct {
		uri, host string
		ok        bool
	}{
		{"tcp:10.0.0.2:4444", "10.0.0.2", true},
		{"tcp:[fd00::2]:4444", "fd00::2", true},
		{"tcp:host.example:1", "host.example", true},
		{"unix:/run/mig.sock", "", false},
		{"tcp:10.0.0.2", "", false},
		{"10.0.0.2:4444", "", false},
	} {
		host, err := migrationHost(tt.uri)
		if (err == nil) != tt.ok || host != tt.host {
			t.Errorf("migrationHost(%q) = %q, %v; want %q, ok %v", tt.uri, host, err, tt.host, tt.ok)
		}
	}
}
