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

// NftTable is the nftables table ("ip weft") that holds weft's masquerade.
const NftTable = "weft"

var weftTable = &nftables.Table{Family: nftables.TableFamilyIPv4, Name: NftTable}

// ensureMasquerade installs, in one transaction, a fresh table "ip weft"
// with the single rule
//
//	postrouting (nat, srcnat): ip saddr Range ip daddr != Range oifname != Bridge masquerade
//
// Replacing the whole table makes Setup idempotent and removes rules of an
// older configuration, and the transaction means there is no moment without
// the rule. Established connections keep their conntrack NAT bindings.
func ensureMasquerade(rng netip.Prefix, bridge string) error {
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
	conn.AddRule(&nftables.Rule{Table: t, Chain: chain, Exprs: masqueradeExprs(rng, bridge)})
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("hostnet: install nftables table ip %s: %w", NftTable, err)
	}
	return nil
}

// masqueradeExprs is the rule body; kept apart so a test can check it.
func masqueradeExprs(rng netip.Prefix, bridge string) []expr.Any {
	addr := rng.Masked().Addr().As4()
	mask := prefixMask(rng.Bits())
	var ifname [unix.IFNAMSIZ]byte
	copy(ifname[:], bridge) // oifname compares the whole zero-padded name
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
