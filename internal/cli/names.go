package cli

import (
	"math/rand/v2"
)

// Words for generated VM names, such as brave-otter. Names use only lowercase letters and '-',
// which Firecracker's --id and the runtime directory accept.
var (
	nameAdjectives = []string{
		"agile", "amber", "bold", "brave", "breezy", "bright", "calm", "clever", "cosmic", "crisp",
		"daring", "eager", "fancy", "fearless", "gentle", "glad", "golden", "happy", "hardy", "jolly",
		"keen", "kind", "lively", "lucky", "mellow", "merry", "mighty", "nimble", "noble", "plucky",
		"polite", "proud", "quick", "quiet", "rapid", "shiny", "silent", "snappy", "spry", "steady",
		"sunny", "swift", "tidy", "trusty", "vivid", "warm", "wise", "witty", "young", "zesty",
	}
	nameAnimals = []string{
		"badger", "beaver", "bison", "cheetah", "condor", "coyote", "crane", "dingo", "dolphin", "eagle",
		"falcon", "ferret", "finch", "gazelle", "gecko", "heron", "ibex", "jackal", "koala", "lemur",
		"lynx", "marmot", "marten", "mink", "moose", "narwhal", "ocelot", "orca", "osprey", "otter",
		"owl", "panda", "puffin", "quail", "rabbit", "raven", "robin", "salmon", "seal", "sparrow",
		"stoat", "swan", "tapir", "tiger", "toucan", "walrus", "weasel", "wombat", "yak", "zebra",
	}
)

// generateName returns a readable random VM name such as brave-otter.
func generateName() string {
	return nameAdjectives[rand.IntN(len(nameAdjectives))] + "-" + nameAnimals[rand.IntN(len(nameAnimals))]
}
