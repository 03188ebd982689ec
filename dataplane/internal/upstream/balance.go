package upstream

import (
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// picker chooses an available target for a request, or nil when none is.
// now is read only when a target is ejected.
type picker interface {
	pick(r *http.Request, now func() int64) *Target
}

// newPicker builds the balancer for spec.loadBalancer.policy; the
// unspecified policy is round robin.
func newPicker(lb *meridianv1.LoadBalancer, ts []*Target) (picker, error) {
	switch lb.GetPolicy() {
	case meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_LEAST_REQUEST:
		return &leastRequest{weighted: newWeighted(ts)}, nil
	case meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_RANDOM:
		return newWeighted(ts), nil
	case meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_CONSISTENT_HASH:
		key, err := parseHashKey(lb.GetHashOn())
		if err != nil {
			return nil, err
		}
		return newRing(ts, key, newRoundRobin(ts)), nil
	default:
		return newRoundRobin(ts), nil
	}
}

// newRoundRobin returns the lock-free counter for equal weights and smooth
// weighted round robin otherwise.
func newRoundRobin(ts []*Target) picker {
	for _, t := range ts {
		if t.weight != ts[0].weight {
			return &smoothWeighted{targets: ts, current: make([]int64, len(ts))}
		}
	}
	return &roundRobin{targets: ts}
}

// roundRobin cycles through equally weighted targets with one atomic
// counter. An unavailable target costs another turn of the counter rather
// than handing its share to its neighbour, so the healthy targets keep
// equal shares.
type roundRobin struct {
	targets []*Target
	counter atomic.Uint64
}

func (rr *roundRobin) pick(_ *http.Request, now func() int64) *Target {
	n := uint64(len(rr.targets))
	if n == 1 {
		if t := rr.targets[0]; t.available(now) {
			return t
		}
		return nil
	}
	for range n {
		t := rr.targets[(rr.counter.Add(1)-1)%n]
		if t.available(now) {
			return t
		}
	}
	return nil
}

// smoothWeighted is nginx's smooth weighted round robin: weights 5,1,1 give
// a a b a c a a rather than a a a a a b c. Unavailable targets sit out of
// the round, as in nginx, so the others keep their relative shares.
type smoothWeighted struct {
	targets []*Target
	mu      sync.Mutex
	current []int64
}

func (s *smoothWeighted) pick(_ *http.Request, now func() int64) *Target {
	s.mu.Lock()
	defer s.mu.Unlock()
	var total int64
	best := -1
	for i, t := range s.targets {
		if !t.available(now) {
			continue
		}
		s.current[i] += t.weight
		total += t.weight
		if best < 0 || s.current[i] > s.current[best] {
			best = i
		}
	}
	if best < 0 {
		return nil
	}
	s.current[best] -= total
	return s.targets[best]
}

// weighted is the random policy: each pick draws a target with probability
// proportional to its weight.
type weighted struct {
	targets []*Target
	equal   bool
	cum     []int64 // cumulative weights; cum[i] = sum of weights[0..i]
}

func newWeighted(ts []*Target) *weighted {
	w := &weighted{targets: ts, equal: true, cum: make([]int64, len(ts))}
	var sum int64
	for i, t := range ts {
		sum += t.weight
		w.cum[i] = sum
		if t.weight != ts[0].weight {
			w.equal = false
		}
	}
	return w
}

// draw returns a random index by weight.
func (w *weighted) draw() int {
	if w.equal {
		return rand.IntN(len(w.targets))
	}
	x := rand.Int64N(w.cum[len(w.cum)-1])
	lo, hi := 0, len(w.cum)-1
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if w.cum[mid] > x {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

func (w *weighted) pick(_ *http.Request, now func() int64) *Target {
	if len(w.targets) == 0 {
		return nil
	}
	if t := w.targets[w.draw()]; t.available(now) {
		return t
	}
	return w.pickAvailable(now)
}

// pickAvailable draws by weight among the available targets only: the
// slow path once a draw has landed on an unavailable one.
func (w *weighted) pickAvailable(now func() int64) *Target {
	var total int64
	for _, t := range w.targets {
		if t.available(now) {
			total += t.weight
		}
	}
	if total == 0 {
		return nil
	}
	x := rand.Int64N(total)
	for _, t := range w.targets {
		if !t.available(now) {
			continue
		}
		if x < t.weight {
			return t
		}
		x -= t.weight
	}
	return nil // a target became unavailable meanwhile
}

// leastRequest is power of two choices: draw two targets by weight and
// keep the one with fewer requests in flight per unit of weight. On a tie
// (an idle upstream) the first draw wins, so idle traffic still follows
// the weights. Equal weights draw two distinct targets.
type leastRequest struct {
	*weighted
}

func (l *leastRequest) pick(_ *http.Request, now func() int64) *Target {
	n := len(l.targets)
	switch n {
	case 0:
		return nil
	case 1:
		if t := l.targets[0]; t.available(now) {
			return t
		}
		return nil
	}
	var i, j int
	if l.equal {
		i = rand.IntN(n)
		j = rand.IntN(n - 1)
		if j >= i {
			j++
		}
	} else {
		i, j = l.draw(), l.draw()
	}
	a, b := l.targets[i], l.targets[j]
	switch okA, okB := a.available(now), b.available(now); {
	case okA && okB:
		// a.inflight/a.weight <= b.inflight/b.weight, without division.
		if b.inflight.Load()*a.weight < a.inflight.Load()*b.weight {
			return b
		}
		return a
	case okA:
		return a
	case okB:
		return b
	}
	return l.leastLoaded(now)
}

// leastLoaded scans every available target: the slow path once both draws
// have landed on unavailable ones.
func (l *leastRequest) leastLoaded(now func() int64) *Target {
	var best *Target
	for _, t := range l.targets {
		if !t.available(now) {
			continue
		}
		if best == nil || t.inflight.Load()*best.weight < best.inflight.Load()*t.weight {
			best = t
		}
	}
	return best
}
