package agent

import (
	"bufio"
	"os"
	"strings"
)

// The guest's user database is read directly (not with os/user), so that the agent needs no
// C library in any build.

// passwdEntry is a line of /etc/passwd.
type passwdEntry struct {
	name, uid, gid, home string
}

// lookupPasswd finds the /etc/passwd entry whose name (byID false) or uid (byID true) is key.
func lookupPasswd(key string, byID bool) (passwdEntry, bool) {
	var found passwdEntry
	ok := false
	scanColonFile("/etc/passwd", func(f []string) bool {
		if len(f) < 7 {
			return true
		}
		if (byID && f[2] == key) || (!byID && f[0] == key) {
			found, ok = passwdEntry{name: f[0], uid: f[2], gid: f[3], home: f[5]}, true
			return false
		}
		return true
	})
	return found, ok
}

// lookupGroupID returns the gid of the group called name in /etc/group.
func lookupGroupID(name string) (string, bool) {
	gid, ok := "", false
	scanColonFile("/etc/group", func(f []string) bool {
		if len(f) >= 3 && f[0] == name {
			gid, ok = f[2], true
			return false
		}
		return true
	})
	return gid, ok
}

// supplementaryGroups returns the gids of the groups in /etc/group that list user as a member.
func supplementaryGroups(user string) []string {
	var gids []string
	scanColonFile("/etc/group", func(f []string) bool {
		if len(f) < 4 {
			return true
		}
		for _, m := range strings.Split(f[3], ",") {
			if m == user {
				gids = append(gids, f[2])
				break
			}
		}
		return true
	})
	return gids
}

// scanColonFile calls fn with the fields of each line of a colon-separated file until fn
// returns false. Comments and blank lines are skipped; a missing file has no lines.
func scanColonFile(path string, fn func([]string) bool) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if !fn(strings.Split(line, ":")) {
			return
		}
	}
}
