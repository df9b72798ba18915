//go:build race

package agenttest

// raceSlowdown scales the gossip timing and the waits of a cluster under
// the race detector: instrumented agents run 5-20x slower, and at the
// local timing's 50 ms probe timeout they declared each other dead while
// forming (the -race failures of TestFiveAgentsFormAndForward and others;
// 3x was not enough on a loaded 2-core machine, 5x was).
const raceSlowdown = 5
