// Package vm holds the end-to-end tests of VMs on Tandem: the storage
// fencing of a VM's disks, the VM runtime and live migration, on real
// multi-process clusters with real QEMU and NBD clients.
package vm
