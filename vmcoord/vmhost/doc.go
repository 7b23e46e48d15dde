// Package vmhost runs, on one host, the VMs the catalog places there: it
// starts a QEMU process for each running VM, with the VM's disks attached
// through the local agent under the VM's writer epoch (so that the storage
// refuses any other writer, docs/fencing.md), restarts a process that
// died, stops processes whose VM was stopped or moved away, and reports
// each VM's state for the admin API.
//
// The Manager is driven by the catalog: the agent calls Reconcile with
// every new catalog state. It never changes the catalog itself. Starting
// and stopping QEMU goes through a Launcher (vmcoord/qemu in the agent,
// a fake in this package's unit tests).
//
// A restarted agent adopts the QEMU processes of its previous run instead
// of starting the VMs anew (Launcher.Adopt): a process whose pid file,
// recorded writer epoch and QMP socket in the VM's run directory still
// match the catalog is taken over, running or paused; any other is killed
// and the VM started again.
package vmhost
