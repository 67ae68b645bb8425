package httpx

import (
	"bufio"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"

	"flotilla/api/errdefs"
)

// WebSocket is a minimal RFC 6455 server connection: enough for the
// change feeds (text frames out, small text frames in, ping/pong, close).
type WebSocket struct {
	conn net.Conn
	br   *bufio.Reader
	wmu  sync.Mutex
}

const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// IsWebSocket reports whether r asks for a WebSocket upgrade.
func IsWebSocket(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Upgrade"), "websocket") &&
		strings.Contains(strings.ToLower(r.Header.Get("Connection")), "upgrade")
}

// UpgradeWebSocket completes the handshake and takes over the connection.
func UpgradeWebSocket(w http.ResponseWriter, r *http.Request) (*WebSocket, error) {
	key := r.Header.Get("Sec-Websocket-Key")
	if !IsWebSocket(r) || key == "" {
		return nil, errdefs.InvalidArgument("this endpoint needs a WebSocket upgrade (Upgrade: websocket)")
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "upgrading the connection")
	}
	sum := sha1.Sum([]byte(key + wsGUID))
	resp := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
		base64.StdEncoding.EncodeToString(sum[:]) + "\r\n\r\n"
	if _, err := conn.Write([]byte(resp)); err != nil {
		conn.Close()
		return nil, err
	}
	return &WebSocket{conn: conn, br: brw.Reader}, nil
}

// WriteText sends one text frame.
func (ws *WebSocket) WriteText(b []byte) error { return ws.writeFrame(0x1, b) }

func (ws *WebSocket) writeFrame(op byte, b []byte) error {
	ws.wmu.Lock()
	defer ws.wmu.Unlock()
	hdr := []byte{0x80 | op}
	switch n := len(b); {
	case n < 126:
		hdr = append(hdr, byte(n))
	case n <= 0xffff:
		hdr = append(hdr, 126, byte(n>>8), byte(n))
	default:
		hdr = append(hdr, 127)
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(n))
	}
	if _, err := ws.conn.Write(append(hdr, b...)); err != nil {
		return err
	}
	return nil
}

// ErrWebSocketClosed is returned by ReadMessage after a close frame.
var ErrWebSocketClosed = errors.New("websocket closed")

// ReadMessage returns the next text or binary message (at most 1 MiB),
// answering pings on the way.
func (ws *WebSocket) ReadMessage() ([]byte, error) {
	var msg []byte
	for {
		var h [2]byte
		if _, err := io.ReadFull(ws.br, h[:]); err != nil {
			return nil, err
		}
		fin, op := h[0]&0x80 != 0, h[0]&0x0f
		masked := h[1]&0x80 != 0
		n := uint64(h[1] & 0x7f)
		switch n {
		case 126:
			var b [2]byte
			if _, err := io.ReadFull(ws.br, b[:]); err != nil {
				return nil, err
			}
			n = uint64(binary.BigEndian.Uint16(b[:]))
		case 127:
			var b [8]byte
			if _, err := io.ReadFull(ws.br, b[:]); err != nil {
				return nil, err
			}
			n = binary.BigEndian.Uint64(b[:])
		}
		if n > 1<<20 || uint64(len(msg))+n > 1<<20 {
			return nil, errors.New("websocket message too large")
		}
		var mask [4]byte
		if masked {
			if _, err := io.ReadFull(ws.br, mask[:]); err != nil {
				return nil, err
			}
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(ws.br, payload); err != nil {
			return nil, err
		}
		if masked {
			for i := range payload {
				payload[i] ^= mask[i%4]
			}
		}
		switch op {
		case 0x8:
			ws.writeFrame(0x8, nil)
			return nil, ErrWebSocketClosed
		case 0x9:
			ws.writeFrame(0xA, payload)
			continue
		case 0xA:
			continue
		}
		msg = append(msg, payload...)
		if fin {
			return msg, nil
		}
	}
}

// Close sends a close frame and closes the connection.
func (ws *WebSocket) Close() error {
	ws.writeFrame(0x8, []byte{0x03, 0xe8})
	return ws.conn.Close()
}
