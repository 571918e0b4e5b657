"""One router per resource; controllers do HTTP only and call one service method."""
