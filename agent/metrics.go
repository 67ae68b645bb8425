package agent

// QueueLen is the number of instances waiting in the agent's work queue
// (metrics read it at scrape time).
func (a *Agent) QueueLen() int { return a.q.Len() }
