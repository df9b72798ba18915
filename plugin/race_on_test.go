//go:build race

package plugin

// raceEnabled: the race detector makes the in-process agent 5-20x slower,
// so tests that count work done within a time budget do less of it.
const raceEnabled = true
