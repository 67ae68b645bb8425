package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"flotilla/api/errdefs"
)

// QMP is a client of the QEMU Machine Protocol over a unix socket.
//
// QEMU writes asynchronous events on the same stream as command replies, and
// an event may arrive between a command and its reply (POWERDOWN is emitted
// before the reply to system_powerdown). A single reader goroutine therefore
// routes every line: replies go to the caller waiting on their id, events go
// to a buffered channel that is never allowed to block the reader. A caller
// that does not read Events loses old events, never replies.
type QMP struct {
	conn    net.Conn
	version QMPVersion

	writeMu sync.Mutex

	mu      sync.Mutex
	nextID  uint64
	pending map[string]chan qmpMessage
	err     error // set once the reader stops
	done    chan struct{}

	events chan QMPEvent
}

// QMPVersion is the QEMU version announced in the greeting.
type QMPVersion struct {
	Major, Minor, Micro int
}

// QMPEvent is one asynchronous event (SHUTDOWN, POWERDOWN, RESUME, ...).
type QMPEvent struct {
	Name string
	Data json.RawMessage
	Time time.Time
}

// QMPStatus is the answer to query-status.
type QMPStatus struct {
	Status  string `json:"status"` // running, paused, prelaunch, shutdown, ...
	Running bool   `json:"running"`
}

// qmpError is the error member of a reply.
type qmpError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

// qmpMessage is any line QEMU sends: a greeting, a reply or an event.
type qmpMessage struct {
	Greeting *struct {
		Version struct {
			QEMU struct {
				Major int `json:"major"`
				Minor int `json:"minor"`
				Micro int `json:"micro"`
			} `json:"qemu"`
		} `json:"version"`
	} `json:"QMP"`
	Return    json.RawMessage `json:"return"`
	Error     *qmpError       `json:"error"`
	ID        json.RawMessage `json:"id"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

func (m qmpMessage) kind() string {
	switch {
	case m.Greeting != nil:
		return "greeting"
	case m.Event != "":
		return "event"
	case m.Return != nil || m.Error != nil:
		return "reply"
	default:
		return ""
	}
}

// parseQMPMessage decodes one line of the QMP stream. It returns Invalid for
// anything that is not a JSON object of a known kind.
func parseQMPMessage(line []byte) (qmpMessage, error) {
	var m qmpMessage
	line = bytes.TrimSpace(line)
	if len(line) == 0 || line[0] != '{' {
		return m, errdefs.New(errdefs.Invalid, "qmp: not a JSON object: %.60q", line)
	}
	if err := json.Unmarshal(line, &m); err != nil {
		return m, errdefs.Wrap(errdefs.Invalid, err, "qmp: malformed message")
	}
	if m.kind() == "" {
		return m, errdefs.New(errdefs.Invalid, "qmp: message is neither greeting, reply nor event: %.60q", line)
	}
	return m, nil
}

// eventBuffer is how many unread events a QMP client keeps.
const eventBuffer = 64

// DialQMP connects to the QMP socket at path, reads the greeting and leaves
// capabilities negotiation mode. It returns Unavailable if nothing listens
// there (the VM is not running) and Internal for a protocol failure.
func DialQMP(ctx context.Context, path string) (*QMP, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Unavailable, err, "qmp: cannot connect to %s", path)
	}
	q, err := newQMP(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return q, nil
}

func newQMP(ctx context.Context, conn net.Conn) (*QMP, error) {
	if dl, ok := ctx.Deadline(); ok {
		conn.SetReadDeadline(dl)
	} else {
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	}
	r := bufio.NewReader(conn)
	line, err := r.ReadBytes('\n')
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Unavailable, err, "qmp: no greeting")
	}
	m, err := parseQMPMessage(line)
	if err != nil {
		return nil, err
	}
	if m.Greeting == nil {
		return nil, errdefs.New(errdefs.Internal, "qmp: expected greeting, got %s", m.kind())
	}
	conn.SetReadDeadline(time.Time{})
	q := &QMP{
		conn:    conn,
		pending: map[string]chan qmpMessage{},
		done:    make(chan struct{}),
		events:  make(chan QMPEvent, eventBuffer),
		version: QMPVersion{m.Greeting.Version.QEMU.Major, m.Greeting.Version.QEMU.Minor, m.Greeting.Version.QEMU.Micro},
	}
	go q.readLoop(r)
	if _, err := q.Execute(ctx, "qmp_capabilities", nil); err != nil {
		q.Close()
		return nil, err
	}
	return q, nil
}

// Version is the QEMU version from the greeting.
func (q *QMP) Version() QMPVersion { return q.version }

// Events delivers asynchronous events. When the buffer is full the oldest
// events are dropped; the channel is closed when the connection ends.
func (q *QMP) Events() <-chan QMPEvent { return q.events }

// Done is closed when the connection has ended (QEMU exited or Close).
func (q *QMP) Done() <-chan struct{} { return q.done }

// Close ends the connection.
func (q *QMP) Close() error {
	err := q.conn.Close()
	<-q.done
	return err
}

func (q *QMP) readLoop(r *bufio.Reader) {
	var err error
	defer func() {
		q.mu.Lock()
		if err == nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
			err = errdefs.New(errdefs.Unavailable, "qmp: connection closed")
		}
		q.err = err
		for id, ch := range q.pending {
			close(ch)
			delete(q.pending, id)
		}
		q.mu.Unlock()
		close(q.events)
		close(q.done)
	}()
	for {
		var line []byte
		line, err = r.ReadBytes('\n')
		if err != nil {
			return
		}
		m, perr := parseQMPMessage(line)
		if perr != nil {
			continue // a line we do not understand must not kill the session
		}
		switch m.kind() {
		case "event":
			ev := QMPEvent{Name: m.Event, Data: m.Data}
			if m.Timestamp != nil {
				ev.Time = time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000)
			}
			q.deliverEvent(ev)
		case "reply":
			q.mu.Lock()
			ch, ok := q.pending[string(m.ID)]
			delete(q.pending, string(m.ID))
			q.mu.Unlock()
			if ok {
				ch <- m // buffered, never blocks
			}
		}
	}
}

func (q *QMP) deliverEvent(ev QMPEvent) {
	for {
		select {
		case q.events <- ev:
			return
		default:
		}
		select { // full: drop the oldest
		case <-q.events:
		default:
		}
	}
}

// Execute runs command with arguments (nil for none) and returns the raw
// "return" value. A QMP error reply comes back as Invalid (GenericError,
// CommandNotFound) or Conflict (DeviceNotActive and friends) carrying QEMU's
// description; a dead connection is Unavailable.
func (q *QMP) Execute(ctx context.Context, command string, arguments any) (json.RawMessage, error) {
	q.mu.Lock()
	if q.err != nil {
		err := q.err
		q.mu.Unlock()
		return nil, err
	}
	q.nextID++
	id := strconv.Quote("flotilla-" + strconv.FormatUint(q.nextID, 10))
	ch := make(chan qmpMessage, 1)
	q.pending[id] = ch
	q.mu.Unlock()

	req := map[string]any{"execute": command, "id": json.RawMessage(id)}
	if arguments != nil {
		req["arguments"] = arguments
	}
	b, err := json.Marshal(req)
	if err != nil {
		q.forget(id)
		return nil, errdefs.Wrap(errdefs.Invalid, err, "qmp: cannot encode arguments of %s", command)
	}
	q.writeMu.Lock()
	if dl, ok := ctx.Deadline(); ok {
		q.conn.SetWriteDeadline(dl)
	} else {
		q.conn.SetWriteDeadline(time.Time{})
	}
	_, err = q.conn.Write(append(b, '\n'))
	q.writeMu.Unlock()
	if err != nil {
		q.forget(id)
		return nil, errdefs.Wrap(errdefs.Unavailable, err, "qmp: cannot send %s", command)
	}
	select {
	case m, ok := <-ch:
		if !ok {
			return nil, errdefs.New(errdefs.Unavailable, "qmp: connection closed while waiting for %s", command)
		}
		if m.Error != nil {
			code := errdefs.Invalid
			if m.Error.Class == "DeviceNotActive" || m.Error.Class == "DeviceNotFound" {
				code = errdefs.Conflict
			}
			return nil, errdefs.New(code, "qmp: %s failed: %s (%s)", command, m.Error.Desc, m.Error.Class)
		}
		return m.Return, nil
	case <-ctx.Done():
		q.forget(id)
		return nil, errdefs.Wrap(errdefs.Unavailable, ctx.Err(), "qmp: no reply to %s", command)
	}
}

func (q *QMP) forget(id string) {
	q.mu.Lock()
	delete(q.pending, id)
	q.mu.Unlock()
}

// QueryStatus returns the VM's run state.
func (q *QMP) QueryStatus(ctx context.Context) (QMPStatus, error) {
	var st QMPStatus
	raw, err := q.Execute(ctx, "query-status", nil)
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return st, errdefs.Wrap(errdefs.Internal, err, "qmp: malformed query-status reply")
	}
	return st, nil
}

// SystemPowerdown presses the guest's ACPI power button.
func (q *QMP) SystemPowerdown(ctx context.Context) error {
	_, err := q.Execute(ctx, "system_powerdown", nil)
	return err
}

// Quit makes QEMU exit at once. The connection usually ends before or right
// after the reply, so a closed connection counts as success.
func (q *QMP) Quit(ctx context.Context) error {
	_, err := q.Execute(ctx, "quit", nil)
	if err != nil && errdefs.CodeOf(err) == errdefs.Unavailable {
		select {
		case <-q.done:
			return nil
		case <-time.After(2 * time.Second):
		}
	}
	return err
}

// Cont resumes a paused (or -S prelaunch) VM.
func (q *QMP) Cont(ctx context.Context) error {
	_, err := q.Execute(ctx, "cont", nil)
	return err
}

// Stop pauses the VM's vCPUs.
func (q *QMP) Stop(ctx context.Context) error {
	_, err := q.Execute(ctx, "stop", nil)
	return err
}

// WaitEvent returns the first event named name that arrives on q, or an
// error when ctx ends or the connection closes first. Other events read
// while waiting are discarded.
func (q *QMP) WaitEvent(ctx context.Context, name string) (QMPEvent, error) {
	for {
		select {
		case ev, ok := <-q.events:
			if !ok {
				return QMPEvent{}, errdefs.New(errdefs.Unavailable, "qmp: connection closed before event %s", name)
			}
			if ev.Name == name {
				return ev, nil
			}
		case <-ctx.Done():
			return QMPEvent{}, errdefs.Wrap(errdefs.Unavailable, ctx.Err(), "qmp: no %s event", name)
		}
	}
}

func (v QMPVersion) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro) }
