//go:build race

package agent

// raceEnabled: the race detector checks every byte copied, which makes bulk streaming tests
// a hundred times slower.
const raceEnabled = true
