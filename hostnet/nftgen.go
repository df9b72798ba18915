package hostnet

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// errNoGen: the kernel's answer to NFT_MSG_GETGEN carried no generation.
var errNoGen = errors.New("hostnet: nftables answered without a generation")

// nftGeneration reads the nftables ruleset generation of the calling
// thread's network namespace: the kernel moves it on by one at every
// committed transaction, whatever table it touched. An unchanged
// generation means an unchanged ruleset, so the periodic check reads table
// ip weft (four chains' rules and two sets, a dozen dumps) only when it
// moved since the last check that found the table whole.
func nftGeneration() (uint32, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return 0, fmt.Errorf("hostnet: nftables generation: %w", err)
	}
	defer conn.Close()
	msgs, err := conn.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN),
			Flags: netlink.Request | netlink.Acknowledge,
		},
		Data: []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0}, // struct nfgenmsg
	})
	if err != nil {
		return 0, fmt.Errorf("hostnet: nftables generation: %w", err)
	}
	for _, m := range msgs {
		if gen, ok := parseGen(m.Data); ok {
			return gen, nil
		}
	}
	return 0, errNoGen
}

// parseGen finds NFTA_GEN_ID in a NEWGEN message's body (after its
// 4-byte nfgenmsg).
func parseGen(b []byte) (uint32, bool) {
	if len(b) < 4 {
		return 0, false
	}
	ad, err := netlink.NewAttributeDecoder(b[4:])
	if err != nil {
		return 0, false
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		if ad.Type() == unix.NFTA_GEN_ID {
			return ad.Uint32(), ad.Err() == nil
		}
	}
	return 0, false
}
