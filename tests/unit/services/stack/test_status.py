"""Reading the services' /metrics pages (services.stack.status) from a real HTTP server."""

import http.server
import threading
import time

import pytest

from services.stack.status import scrape, scrape_with, total


class _Pages(http.server.BaseHTTPRequestHandler):
    pages: list[str] = []
    delay_s = 0.0
    served = 0

    def do_GET(self):  # noqa: N802 - the http.server name
        time.sleep(self.delay_s)
        cls = type(self)
        body = cls.pages[min(cls.served, len(cls.pages) - 1)].encode()
        cls.served += 1
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def metrics_page():
    handler = type("Handler", (_Pages,), {"pages": [], "served": 0, "delay_s": 0.0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}/metrics"
    server.shutdown()
    server.server_close()


TRAINED = "# TYPE streamrec_trainer_events_trained counter\nstreamrec_trainer_events_trained_total 1234.0\n"


def test_a_service_slow_to_answer_is_read_not_taken_as_down(metrics_page):
    handler, url = metrics_page
    handler.pages, handler.delay_s = [TRAINED], 2.0  # a trainer busy training on a loaded machine
    assert total(scrape(url), "streamrec_trainer_events_trained_total") == 1234.0


def test_a_reading_that_must_be_there_is_retried_until_it_is(metrics_page):
    handler, url = metrics_page
    handler.pages = ["", "# TYPE other gauge\nother 1.0\n", TRAINED]
    samples = scrape_with(url, "streamrec_trainer_events_trained_total", deadline_s=60)
    assert total(samples, "streamrec_trainer_events_trained_total") == 1234.0 and handler.served == 3


def test_a_reading_that_never_comes_is_an_error_naming_the_page_and_the_metric(metrics_page):
    handler, url = metrics_page
    handler.pages = ["# TYPE other gauge\nother 1.0\n"]
    with pytest.raises(RuntimeError, match="streamrec_trainer_events_trained_total.*/metrics"):
        scrape_with(url, "streamrec_trainer_events_trained_total", deadline_s=1)
    # A page nobody serves is down: nothing, at once.
    handler.pages = [TRAINED]
    assert scrape("http://127.0.0.1:9/metrics") == {}
