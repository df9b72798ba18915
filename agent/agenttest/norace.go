//go:build !race

package agenttest

const raceSlowdown = 1
