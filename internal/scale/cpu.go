package scale

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTick is the unit of /proc/<pid>/stat's times (USER_HZ, 100 on Linux).
const clockTick = 10 * time.Millisecond

// cpuOf reads the user and system time each process has used so far (/proc/<pid>/stat); processes it cannot
// read (ended, or not Linux) are left out.
func cpuOf(pids []int) map[int]time.Duration {
	out := map[int]time.Duration{}
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// The command name (field 2) may hold spaces; the fields after its closing parenthesis are fixed.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 13 {
			continue
		}
		utime, err1 := strconv.ParseInt(f[11], 10, 64)
		stime, err2 := strconv.ParseInt(f[12], 10, 64)
		if err1 == nil && err2 == nil {
			out[pid] = time.Duration(utime+stime) * clockTick
		}
	}
	return out
}

// cpuDelta is the time the processes in before that are still among pids used since before was read.
func cpuDelta(before map[int]time.Duration, pids []int) time.Duration {
	var sum time.Duration
	for pid, d := range cpuOf(pids) {
		if b, ok := before[pid]; ok {
			sum += d - b
		}
	}
	return sum
}
