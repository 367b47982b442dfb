"""The HTTP/JSON front door and the web page, beside gRPC, on STYLIZE_HTTP_PORT (server/main.py starts it).

    make serve
    curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' \\
        'http://127.0.0.1:8080/v1/models/starry_night:stylize?strength=0.8' -o out.png

Every route builds the API's own request message and calls server/service.py,
so validation, admission, limits, metrics and errors are the gRPC port's.
"""
