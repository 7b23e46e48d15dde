package main

import (
	"reflect"
	"strings"
	"testing"

	"github.com/tandem-project/tandem/agent"
)

// TestParseVolumeFlag covers the --volume forms and their errors.
func TestParseVolumeFlag(t *testing.T) {
	for _, tc := range []struct {
		in        string
		want      agent.VolumeSpec
		wantLocal bool
		wantErr   string
	}{
		{in: "vm1=20G", want: agent.VolumeSpec{Name: "vm1", Size: 20 << 30}},
		{in: "vm1=1G,ro,replicas=n1+n2,leader=n2", want: agent.VolumeSpec{Name: "vm1", Size: 1 << 30, ReadOnly: true, Replicas: []string{"n1", "n2"}, PreferredLeader: "n2"}},
		{in: "scratch=50G,local", want: agent.VolumeSpec{Name: "scratch", Size: 50 << 30}, wantLocal: true},
		{in: "scratch=1M,ro,local", want: agent.VolumeSpec{Name: "scratch", Size: 1 << 20, ReadOnly: true}, wantLocal: true},
		{in: "scratch=1G,local,replicas=n1+n2", wantErr: "a local volume has no replicas and no leader"},
		{in: "scratch=1G,leader=n1,local", wantErr: "a local volume has no replicas and no leader"},
		{in: "vm1=1G,fast", wantErr: `unknown option "fast"`},
		{in: "vm1", wantErr: "want NAME=SIZE"},
		{in: "vm1=lots", wantErr: "vm1=lots"},
		{in: "bad/name=1G", wantErr: "bad/name"},
	} {
		got, local, err := parseVolumeFlag(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: error %v, want one containing %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || local != tc.wantLocal || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%q: %+v, local %v, %v; want %+v, local %v", tc.in, got, local, err, tc.want, tc.wantLocal)
		}
	}
}
