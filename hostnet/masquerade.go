package hostnet

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// NftTable is the nftables table ("ip weft") that holds weft's masquerade
// and host filter.
const NftTable = "weft"

var weftTable = &nftables.Table{Family: nftables.TableFamilyIPv4, Name: NftTable}

// installTable installs, in one transaction, a fresh table "ip weft" with
// the masquerade
//
//	postrouting (nat, srcnat): ip saddr Range ip daddr != Range oifname != Bridge masquerade
//
// the host filter (see filter.go) seeded with g, and the leak guard (see
// leakguard.go).
//
// Replacing the whole table makes Setup idempotent and removes rules of an
// older configuration, and the transaction means there is no moment without
// the rules. Established connections keep their conntrack NAT bindings.
func installTable(cfg Config, g guard) error {
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("hostnet: nftables: %w", err)
	}
	// Adding before deleting makes the delete succeed when the table is new.
	conn.AddTable(weftTable)
	conn.DelTable(weftTable)
	t := conn.AddTable(weftTable)
	chain := conn.AddChain(&nftables.Chain{
		Name:     "postrouting",
		Table:    t,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
	})
	conn.AddRule(&nftables.Rule{Table: t, Chain: chain, Exprs: masqueradeExprs(cfg.Range, cfg.Bridge)})
	if err := addFilter(conn, t, cfg, g); err != nil {
		return err
	}
	addLeakGuard(conn, t, cfg)
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("hostnet: install nftables table ip %s: %w", NftTable, err)
	}
	return nil
}

// masqueradeExprs is the rule body; kept apart so a test can check it.
func masqueradeExprs(rng netip.Prefix, bridge string) []expr.Any {
	addr := rng.Masked().Addr().As4()
	mask := prefixMask(rng.Bits())
	ifname := ifnameBytes(bridge)
	return []expr.Any{
		// ip saddr Range
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask[:], Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr[:]},
		// ip daddr != Range
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask[:], Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: addr[:]},
		// oifname != Bridge
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname[:]},
		&expr.Masq{},
	}
}

// ifnameBytes is name zero-padded to IFNAMSIZ: iifname and oifname compare
// the whole buffer.
func ifnameBytes(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func prefixMask(bits int) [4]byte {
	var m [4]byte
	for i := range bits {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return m
}

// deleteMasquerade removes the table; an absent table is success.
func deleteMasquerade() error {
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("hostnet: nftables: %w", err)
	}
	conn.DelTable(weftTable)
	if err := conn.Flush(); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("hostnet: delete nftables table ip %s: %w", NftTable, err)
	}
	return nil
}
