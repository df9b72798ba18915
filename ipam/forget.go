package ipam

// Forget stops allocation and deletes this peer's state without handing its
// ranges to anyone: `weft reset` on the last host of a mesh, where there is
// nobody to take them and the ring ends with this host.
func (p *IPAM) Forget() error {
	p.mu.Lock()
	return p.leaveUnlock(nil)
}
